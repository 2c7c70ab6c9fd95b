"""Backends: one small interface over a Hugging Face causal LM, loaded locally or through a Petals swarm.

Greedy decoding runs the same `transformers.generate` loop on the client for both; they differ only in where
the transformer blocks run, which is what makes token-for-token parity between them a meaningful check.
Sampling several completions locally uses a loop of its own that shares the prompt's cache (see
`Backend._sample_shared_prompt`); both local paths start from the attention cache of the longest prefix they
encoded before (`Backend._cached_prefix`).
"""
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from .config import CACHE_DIR, GenerationConfig, UserError


@dataclass
class Completion:
    text: str  # decoded completion, cut before the first stop string
    token_ids: List[int]  # generated ids up to and including the stop (or max_new_tokens)
    truncated: bool  # hit max_new_tokens without a stop string or end-of-sequence
    latency_s: float
    stop: Optional[str] = None  # the stop string that ended it, if one did


class _StopOnStrings:
    """Stop once the decoded new text of every sequence contains a stop string (transformers 4.34 has none)."""

    def __init__(self, tokenizer, prompt_len: int, stop: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, stop

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:])
        return all(any(s in t for s in self.stop) for t in texts)


# The Petals client's defaults retry a failed step forever (max_retries=None) and wait 180 s per request;
# a run should instead stop with a clear error and resume later. Failover to another server holding the
# same blocks takes one retry.
PETALS_CLIENT = dict(max_retries=4, request_timeout=60, daemon_startup_timeout=30)


class BackendError(Exception):
    """The swarm failed a generation after the client's retries (servers gone, no route, timeouts)."""


class Backend:
    """A tokenizer plus a causal LM whose blocks run locally or in a swarm."""

    def __init__(self, name: str, model_name: str, model, tokenizer, dht=None):
        self.name, self.model_name, self.model, self.tokenizer, self._dht = name, model_name, model, tokenizer, dht
        self.soft_prompt = None
        self.reuse_prefix = name == "local"  # see _cached_prefix; off, it encodes every prompt whole
        self._prefix = ([], None)  # token ids encoded last, and their attention cache

    def set_soft_prompt(self, prompt) -> None:
        """Prepend a trained soft prompt (`tuning.SoftPrompt`) to every prompt from now on.

        petals: the client's own P-tuning embeddings (Petals' PTuneMixin, created here rather than at load
        time so that one load path serves plain and tuned runs); its generate reserves the prefix in the
        servers' caches. local: the prompt goes in front of the input embeddings, and a deep prompt is added
        to the prefix before every decoder layer, exactly where Petals' servers add it."""
        import torch

        if self.name == "petals":
            t = self.model.transformer
            t.config.tuning_mode, t.config.pre_seq_len = prompt.mode, prompt.length
            t.init_prompts(t.config)
            with torch.no_grad():
                for key, value in prompt.petals_weights().items():
                    t.get_submodule(key.rpartition(".")[0]).weight.copy_(value)
        self.soft_prompt = prompt

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    def generate(self, prompt: str, gen: GenerationConfig) -> List[Completion]:
        """`gen.n` completions of one prompt: greedy or sampled, stopped at the first stop string."""
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        start = time.perf_counter()
        with torch.inference_mode(), self._deep_prompt_hooks():
            if gen.n > 1 and self.name == "local":
                rows = self._sample_shared_prompt(ids, gen)
            else:
                try:
                    rows = self._generate_batch(ids, gen)
                except Exception as e:
                    if self.name != "petals":
                        raise
                    detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise BackendError(f"the swarm failed after {PETALS_CLIENT['max_retries']} tries: "
                                       f"{type(e).__name__} {detail}".rstrip()) from e
        latency = (time.perf_counter() - start) / gen.n
        return [self._finish(row, gen, latency) for row in rows]

    def _generate_batch(self, ids, gen: GenerationConfig) -> List[List[int]]:
        """transformers' generate on `gen.n` copies of the prompt (the Petals client takes no padding, and
        same-prompt rows need none); the batch runs until every row has stopped."""
        import torch
        from transformers import StoppingCriteriaList

        ids = ids.repeat(gen.n, 1)
        sampling = gen.temperature > 0
        if sampling:
            torch.manual_seed(gen.seed)
        # Sampling settings go in only when sampling: transformers warns about them under greedy decoding.
        sample_kw = dict(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k) if sampling else {}
        mask, embeds = torch.ones_like(ids), {}
        if self.name == "local" and self.soft_prompt is not None:
            # the first step encodes the embeddings (prompt included); the ids only carry the text along
            embeds = dict(inputs_embeds=self._embed_with_prompt(ids))
            mask = torch.ones(embeds["inputs_embeds"].shape[:2], dtype=torch.long)
        elif self.reuse_prefix and gen.n == 1:
            embeds = dict(past_key_values=self._cached_prefix(ids))  # generate then encodes the last token only
        out = self.model.generate(
            input_ids=ids, **embeds, attention_mask=mask, max_new_tokens=gen.max_new_tokens, do_sample=sampling,
            pad_token_id=self.tokenizer.eos_token_id, **sample_kw,
            stopping_criteria=StoppingCriteriaList([_StopOnStrings(self.tokenizer, ids.shape[1], gen.stop)]),
        )
        return [row[ids.shape[1]:].tolist() for row in out]

    def _cached_prefix(self, ids):
        """The attention cache of `ids` without its last token. Every problem's prompt starts with the same
        exemplars, and the calculator method sends the same prompt again after each pause, so the longest
        prefix shared with the previous call is taken from its cache and only the rest is encoded: with a few
        hundred exemplar tokens per call that is most of the prompt (benchmarks/prompt_cache.py)."""
        import torch

        new = ids[0, :-1].tolist()
        old, past = self._prefix if self.reuse_prefix else ([], None)
        shared = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        if shared == 0:
            past = None
        elif shared < len(old):
            past = tuple((k[:, :, :shared], v[:, :, :shared]) for k, v in past)
        if shared < len(new):
            rest = ids[:, shared:-1]
            mask = torch.ones(1, len(new), dtype=torch.long)
            past = self.model(rest, attention_mask=mask, past_key_values=past, use_cache=True).past_key_values
        self._prefix = (new, past)
        return past

    def _embed_with_prompt(self, ids):
        """Input embeddings of `ids` behind the soft prompt (local backend)."""
        import torch

        embeds = self.model.get_input_embeddings()(ids)
        prefix = self.soft_prompt.prompts.to(embeds.dtype).expand(ids.shape[0], -1, -1)
        return torch.cat([prefix, embeds], dim=1)

    @contextlib.contextmanager
    def _deep_prompt_hooks(self):
        """Local deep prompts: before decoder layer i, add prompt i to the prefix positions, on the pass that
        encodes the prompt (no cache yet) only; later steps attend to the cached, already-shifted prefix."""
        prompt = self.soft_prompt
        if self.name != "local" or prompt is None or prompt.intermediate is None:
            yield
            return

        def hook_for(i):
            def hook(module, args, kwargs):
                if kwargs.get("past_key_value") is not None:
                    return None
                hidden = args[0].clone()
                hidden[:, :prompt.length] += prompt.intermediate[i].to(hidden.dtype)
                return (hidden, *args[1:]), kwargs
            return hook

        layers = self.model.get_decoder().layers
        handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _sample_shared_prompt(self, ids, gen: GenerationConfig) -> List[List[int]]:
        """Sample `gen.n` completions locally, encoding the prompt once and copying its attention cache to
        every row; a row leaves the batch as soon as it stops, so one long sample does not make the others
        pay for its length. Same distribution as transformers' sampling (temperature, then top-k, top-p)."""
        import torch

        generator = torch.Generator().manual_seed(gen.seed)
        if self.soft_prompt is not None:
            past = self.model(inputs_embeds=self._embed_with_prompt(ids[:, :-1]), use_cache=True).past_key_values
        else:
            past = self._cached_prefix(ids)
        past = tuple((k.expand(gen.n, -1, -1, -1).contiguous(), v.expand(gen.n, -1, -1, -1).contiguous())
                     for k, v in past)
        prefix = self.soft_prompt.length if self.soft_prompt is not None else 0
        last, position = ids[:, -1:].repeat(gen.n, 1), prefix + ids.shape[1] - 1
        rows, active = [[] for _ in range(gen.n)], list(range(gen.n))
        eos = self.tokenizer.eos_token_id
        for _ in range(gen.max_new_tokens):
            out = self.model(last, past_key_values=past, use_cache=True,
                             position_ids=torch.full((len(active), 1), position))
            tokens = _sample(out.logits[:, -1, :], gen, generator)
            keep = []
            for j, (row, token) in enumerate(zip(active, tokens.tolist())):
                rows[row].append(token)
                tail = self.tokenizer.decode(rows[row][-8:])  # stop strings are a few tokens long at most
                if token != eos and not any(s in tail for s in gen.stop):
                    keep.append(j)
            if not keep:
                break
            past = out.past_key_values
            if len(keep) < len(active):
                past = tuple((k[keep], v[keep]) for k, v in past)
            last, active, position = tokens[keep].unsqueeze(1), [active[j] for j in keep], position + 1
        return rows

    def _finish(self, new_ids: List[int], gen: GenerationConfig, latency: float) -> Completion:
        eos = self.tokenizer.eos_token_id
        if eos in new_ids:  # batch rows that ended early are padded with eos after their end
            new_ids = new_ids[: new_ids.index(eos) + 1]
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        cut, stop = min(((text.index(s), s) for s in gen.stop if s in text), default=(None, None))
        stopped = cut is not None or eos in new_ids
        if cut is not None:
            text = text[:cut]
            # a batch row that stopped early went on until the others stopped: drop that tail
            end = next(i for i in range(1, len(new_ids) + 1)
                       if any(s in self.tokenizer.decode(new_ids[:i], skip_special_tokens=True) for s in gen.stop))
            new_ids = new_ids[:end]
        return Completion(text, new_ids, truncated=not stopped and len(new_ids) >= gen.max_new_tokens,
                          latency_s=latency, stop=stop)

    def close(self) -> None:
        """Shut down the client's DHT: otherwise the process can hang at exit in session cleanup."""
        if self._dht is not None:
            self._dht.shutdown()
            self._dht = None


def _sample(logits, gen: GenerationConfig, generator):
    """One token per row: temperature, then top-k, then top-p (nucleus), as transformers' warpers do."""
    import torch

    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= gen.top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def load_backend(name: str, model_path: str, initial_peers: Sequence[str] = (),
                 dht_prefix: Optional[str] = None) -> Backend:
    """Load `model_path` as backend `name` ('local' or 'petals'); fp32, so both give identical tokens."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if name == "local":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
        return Backend(name, model_path, model.eval(), tokenizer)
    if name == "petals":
        model, dht = _load_petals(model_path, initial_peers, dht_prefix)
        return Backend(name, model_path, model.eval(), tokenizer, dht)
    raise UserError(f"unknown backend {name!r}: use local or petals")


@contextlib.contextmanager
def open_backend(name: str, model_path: str, initial_peers: Sequence[str] = (), dht_prefix: Optional[str] = None,
                 num_servers: int = 2, workdir: Optional[Path] = None):
    """A backend ready to generate; for 'petals' without peers, a loopback swarm lives as long as it."""
    with contextlib.ExitStack() as stack:
        if name == "petals" and not initial_peers:
            from .swarm import LoopbackSwarm

            print(f"starting a loopback swarm ({num_servers} servers) for {model_path} ...", file=sys.stderr)
            swarm = stack.enter_context(LoopbackSwarm(model_path, workdir or CACHE_DIR / "swarm", num_servers))
            initial_peers, dht_prefix = swarm.initial_peers, swarm.dht_prefix
        backend = load_backend(name, model_path, initial_peers, dht_prefix)
        stack.callback(backend.close)
        yield backend


def _load_petals(model_path: str, initial_peers: Sequence[str], dht_prefix: Optional[str]):
    import torch
    from hivemind import DHT
    from hivemind.p2p import P2PDaemonError
    from petals import AutoDistributedModelForCausalLM
    from petals.client import RemoteSequential
    from petals.client.routing import sequence_manager

    from . import petals_patches
    from .swarm import LOOPBACK_P2P, dht_prefix_for, gc_frozen

    petals_patches.apply()
    if not initial_peers:
        raise UserError("--initial-peers is empty: refusing to default to the public swarm")

    class ClientDHT(DHT):
        """hivemind's DHT with our p2p settings (no NAT port mapping, no AutoNAT, loopback listen address),
        forked with the garbage collector frozen, and a bounded wait for its process to come up."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**LOOPBACK_P2P, **kwargs})

        def run_in_background(self, await_ready: bool = True, timeout: Optional[float] = None) -> None:
            with gc_frozen():
                self.start()
            if await_ready:
                self.wait_until_ready(timeout or 60)

    # Petals' client builds its DHT inside the model constructor with hivemind's defaults and offers no
    # option to change them, so the class it instantiates is swapped for the duration of the load.
    original, sequence_manager.DHT = sequence_manager.DHT, ClientDHT
    load = lambda: AutoDistributedModelForCausalLM.from_pretrained(  # noqa: E731
        model_path, initial_peers=list(initial_peers), dht_prefix=dht_prefix or dht_prefix_for(model_path),
        torch_dtype=torch.float32, **PETALS_CLIENT)
    try:
        try:
            model = load()
        except TimeoutError:  # the DHT process did not come up: one more try with a fresh one
            model = load()
    except P2PDaemonError as e:
        raise UserError(f"cannot reach the swarm at {' '.join(initial_peers)}: {str(e).splitlines()[0]}") from None
    finally:
        sequence_manager.DHT = original
    dht = next(m for m in model.modules() if isinstance(m, RemoteSequential)).sequence_manager.dht
    return model, dht
