"""The Petals backend: the client keeps the embeddings, the LM head and any soft prompt; the transformer
blocks run on the swarm's servers. Decoding is transformers' `generate` loop on the client, for several
requests at once, each in its own inference session (`ThreadedBackend`); a request's n rows share
one session (Petals' servers hold one cache of fixed batch size per session and take no padding, and rows of
one prompt need none).
"""
import logging
import os
import re
from typing import List, Optional, Sequence

from ..config import GenerationConfig, UserError, one_line
from . import BackendError, ThreadedBackend, row_generators, sample

# The Petals client's defaults retry a failed step forever (max_retries=None) and wait 180 s per request;
# a run should instead stop with a clear error and resume later. Failover to another server holding the
# same blocks takes one retry, but only after the request timeout: a server killed mid-step is noticed when
# its reply is late, not when it dies. The wait must still outlast a step queued behind others: on 2 CPU
# cores, the first step of 4 self-consistency requests (8 rows x ~800 prompt tokens each) ended after more
# than 60 s, the client gave up, its server freed the cache the queued step needed (KeyError in the server's
# log), and every retry began again. $GSMSWARM_REQUEST_TIMEOUT shortens the wait where every step is quick
# (the fault tests) or lengthens it for longer prompts on slower servers.
MAX_RETRIES = 4
REQUEST_TIMEOUT_S = 300


def _client_options() -> dict:
    text = os.environ.get("GSMSWARM_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT_S))
    try:
        timeout = float(text)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise UserError(f"$GSMSWARM_REQUEST_TIMEOUT={text!r}: give seconds, a number above 0")
    return dict(max_retries=MAX_RETRIES, request_timeout=timeout, daemon_startup_timeout=30)


class _StopOnStrings:
    """Stop once the decoded new text of every sequence contains a stop string (transformers 4.34 has none)."""

    def __init__(self, tokenizer, prompt_len: int, stop: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, stop

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:])
        return all(any(s in t for s in self.stop) for t in texts)


class _Draw:
    """Sampling as the local backend samples (`sample`, one generator per row), handed to transformers' greedy
    search as the only finite score. transformers' own sampling draws from torch's global generator: one
    stream shared by every row, problem and thread, so a swarm's sampled completions could not be compared
    with local ones, nor reproduced when requests overlap."""

    def __init__(self, gen: GenerationConfig, generators: list):
        self.gen, self.generators = gen, generators

    def __call__(self, input_ids, scores):
        import torch

        tokens = sample(scores.float(), self.gen, self.generators)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None].to(scores.device), 0.0)


class PetalsBackend(ThreadedBackend):
    name = "petals"
    remote = True

    def __init__(self, model_path: str, model, tokenizer, dht, workers: int = 1):
        super().__init__(workers)
        self.model_name, self.model, self.tokenizer, self._dht = model_path, model, tokenizer, dht
        self.soft_prompt = None

    @classmethod
    def load(cls, model_path: str, initial_peers: Sequence[str] = (), dht_prefix: Optional[str] = None,
             device: str = "cpu", dtype=None, batch_size: int = 1) -> "PetalsBackend":
        from transformers import AutoTokenizer

        model, dht = _load_petals(model_path, initial_peers, dht_prefix, dtype)
        return cls(model_path, model.to(device).eval(), AutoTokenizer.from_pretrained(model_path), dht, batch_size)

    def set_soft_prompt(self, prompt) -> None:
        """The client's own P-tuning embeddings (Petals' PTuneMixin, created here rather than at load time so
        that one load path serves plain and tuned runs); its generate reserves the prefix in the servers'
        caches."""
        import torch

        t = self.model.transformer
        t.config.tuning_mode, t.config.pre_seq_len = prompt.mode, prompt.length
        t.init_prompts(t.config)
        t.to(self.model.device)
        with torch.no_grad():
            for key, value in prompt.petals_weights().items():
                t.get_submodule(key.rpartition(".")[0]).weight.copy_(value)
        self.soft_prompt = prompt

    def trainable(self, prompt):
        """The client's prompt embeddings as the trainable parameters; the servers' blocks stay frozen and
        send gradients back. Hidden states come without the prompt positions (the client strips them)."""
        self.set_soft_prompt(prompt)
        self.model.requires_grad_(False)
        t = self.model.transformer
        params = [t.prompt_embeddings.weight]
        if prompt.mode == "deep_ptune":
            params.append(t.intermediate_prompt_embeddings.weight)
        for p in params:
            p.requires_grad_(True)
        return params, lambda ids: t(ids).last_hidden_state

    def _generate(self, prompt: str, gen: GenerationConfig, seed: int) -> List[List[int]]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.repeat(gen.n, 1).to(self.model.device)
        draw = [_Draw(gen, row_generators(gen, seed))] if gen.temperature > 0 else []
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen.max_new_tokens,
                    do_sample=False, logits_processor=LogitsProcessorList(draw),
                    pad_token_id=self.tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([_StopOnStrings(self.tokenizer, ids.shape[1], gen.stop)]))
        except Exception as e:
            raise BackendError(f"the swarm failed after {MAX_RETRIES} tries: {one_line(e)}") from e
        return [row[ids.shape[1]:].tolist() for row in out]

    def close(self) -> None:
        """Stop the client's routing thread, then its DHT: otherwise the process can hang at exit in session
        cleanup, and a routing update that a failing request in flight asked for finds the DHT closed and
        prints a traceback."""
        if self._dht is not None:
            from petals.client import RemoteSequential

            for module in self.model.modules():
                if isinstance(module, RemoteSequential):
                    module.sequence_manager.shutdown()
            self._dht.shutdown()
            self._dht = None


# Petals' description of a retried span: peer id, blocks, and the server's whole ServerInfo.
_SPAN = re.compile(r"RemoteSpanInfo\(peer_id=<libp2p\.peer\.id\.ID \(\w*?(\w{6})\)>, start=(\d+), end=(\d+), "
                   r"server_info=.*?\) \(retry in", re.S)


class OneLineRetries(logging.Filter):
    """Petals' client logs every retry with the remote error's whole text (a server's traceback included) and
    then, for errors without text, a second record with the local traceback. A user watching a run needs one
    short line per retry, with the error in it: the server's description (its whole ServerInfo) is cut to
    its blocks and peer id before the line is; the run's stop message and the records say the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = _SPAN.sub(r"blocks \2:\3 at ...\1 (retry in", record.getMessage())
        if text.startswith("See detailed traceback"):
            return False
        first = text.splitlines()[0] if text else ""
        cut = first[:200] + ("..." if len(first) > 200 or "\n" in text else "")
        if record.exc_info and record.exc_info[1] is not None and not first:
            cut = one_line(record.exc_info[1])
        record.msg, record.args, record.exc_info, record.exc_text = cut, None, None, None
        return True


RETRY_LOGGERS = ("petals.client.inference_session", "petals.client.routing.sequence_manager")


def _load_petals(model_path: str, initial_peers: Sequence[str], dht_prefix: Optional[str], dtype):
    import torch
    from hivemind import DHT
    from hivemind.p2p import P2PDaemonError
    from petals import AutoDistributedModelForCausalLM
    from petals.client import RemoteSequential
    from petals.client.routing import sequence_manager

    from .. import petals_patches
    from ..swarm import LOOPBACK_P2P, dht_prefix_for, gc_frozen

    options = _client_options()  # a bad $GSMSWARM_REQUEST_TIMEOUT stops the run before the swarm is dialled
    petals_patches.apply()
    for name in RETRY_LOGGERS:
        if not any(isinstance(f, OneLineRetries) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(OneLineRetries())
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
        torch_dtype=dtype or torch.float32, **options)
    try:
        try:
            model = load()
        except TimeoutError:  # the DHT process did not come up: one more try with a fresh one
            model = load()
    except P2PDaemonError as e:
        raise UserError(f"cannot reach the swarm at {' '.join(initial_peers)}: {one_line(e)}") from None
    finally:
        sequence_manager.DHT = original
    dht = next(m for m in model.modules() if isinstance(m, RemoteSequential)).sequence_manager.dht
    return model, dht
