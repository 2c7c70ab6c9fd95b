"""Backends: where the model runs. One small interface, one module per backend, looked up by name.

The interface (`Backend`) is what the evaluation engine (`gsmswarm.engine`) needs to keep many problems in
flight: `submit(key, prompt, gen)` queues a request for `gen.n` completions, `step()` advances decoding and
returns the requests that finished, `wants_more()` says whether another request would be decoded right now.
`generate(prompt, gen)` is the one-call convenience built on them (notebooks, parity checks, tests).
A backend also has a `tokenizer`, a `model` (the client-side Hugging Face model), `close`, and owns how a soft
prompt is attached: `set_soft_prompt(prompt)` for generation, `trainable(prompt) -> (params, hidden_fn)` for
training (`gsmswarm.tuning` never asks which backend it has).

    local     transformers' weights on this machine, continuous batching over a slot cache (`local.py`)
    petals    the client of a Petals swarm; its blocks run on the servers (`petals.py`)
    scripted  canned completions for unit tests of methods and the engine (`scripted.py`; never for results)
"""
import contextlib
import queue
import sys
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Hashable, List, Optional, Sequence, Tuple, Union

from ..config import CACHE_DIR, GenerationConfig, UserError

BACKENDS = {"local": "gsmswarm.backends.local:LocalBackend", "petals": "gsmswarm.backends.petals:PetalsBackend"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Completion:
    text: str  # decoded completion, cut before the first stop string
    token_ids: List[int]  # generated ids up to and including the stop (or max_new_tokens)
    truncated: bool  # hit max_new_tokens without a stop string or end-of-sequence
    latency_s: float
    stop: Optional[str] = None  # the stop string that ended it, if one did


class BackendError(Exception):
    """The swarm failed a generation after the client's retries (servers gone, no route, timeouts)."""


class Backend:
    """What every backend offers; `generate` is written once here in terms of `submit` and `step`."""

    name = ""
    tokenizer = None
    model = None
    remote = False  # its computation runs elsewhere and can fail for reasons outside this process (a swarm)

    def submit(self, key: Hashable, prompt: str, gen: GenerationConfig, seed: int = 0) -> None:
        """Queue `gen.n` completions of `prompt`; `seed` (with `gen.seed`) fixes a sampled request's draws."""
        raise NotImplementedError

    def step(self) -> List[Tuple[Hashable, Union[List[Completion], BackendError]]]:
        """Advance decoding; the requests that finished, each with its `gen.n` completions, or with the
        BackendError that ended it (the run records it and goes on)."""
        raise NotImplementedError

    def wants_more(self) -> bool:
        """True if a request submitted now would be decoded at the next step (free capacity, nothing queued)."""
        raise NotImplementedError

    def set_soft_prompt(self, prompt) -> None:
        raise NotImplementedError

    def trainable(self, prompt):
        raise NotImplementedError

    def generate(self, prompt: str, gen: GenerationConfig, seed: int = 0) -> List[Completion]:
        """`gen.n` completions of one prompt: greedy or sampled, stopped at the first stop string."""
        key = object()
        self.submit(key, prompt, gen, seed)
        while True:
            for done, answer in self.step():
                if done is key:
                    if isinstance(answer, BackendError):
                        raise answer
                    return answer

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    def finish(self, new_ids: List[int], gen: GenerationConfig, latency: float) -> Completion:
        """A completion from generated ids: cut at the first stop string (ids too) or end-of-sequence."""
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        if eos in new_ids:  # batch rows that ended early are padded with eos after their end
            new_ids = new_ids[: new_ids.index(eos) + 1]
        text = tok.decode(new_ids, skip_special_tokens=True)
        cut, stop = min(((text.index(s), s) for s in gen.stop if s in text), default=(None, None))
        stopped = cut is not None or eos in new_ids
        if cut is not None:
            text = text[:cut]
            # a row that went on after its stop string (a batch that decodes to its longest row): drop that tail
            end = next(i for i in range(1, len(new_ids) + 1)
                       if any(s in tok.decode(new_ids[:i], skip_special_tokens=True) for s in gen.stop))
            new_ids = new_ids[:end]
        return Completion(text, new_ids, truncated=not stopped and len(new_ids) >= gen.max_new_tokens,
                          latency_s=latency, stop=stop)

    def close(self) -> None:
        pass


class ThreadedBackend(Backend):
    """A backend that decodes each request with a blocking `_generate(prompt, gen, seed) -> [ids per row]`,
    up to `workers` requests at once, each in a thread of its own (Petals: each in its own inference session,
    so that every server of a chain computes at the same time; the client keeps the active session per
    thread). Daemon threads: a run that stops (an error, Ctrl-C) exits without waiting for them."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._done = queue.Queue()  # (key, rows or BackendError, gen, start) from the threads
        self._running = 0

    def submit(self, key, prompt, gen, seed=0):
        self._running += 1
        threading.Thread(target=self._one, args=(key, prompt, gen, seed), daemon=True,
                         name=f"{self.name}-request").start()

    def wants_more(self) -> bool:
        return self._running < self.workers

    def step(self):
        if not self._running:
            return []
        finished = [self._done.get()]
        while not self._done.empty():
            finished.append(self._done.get())
        self._running -= len(finished)
        out = []
        for key, rows, gen, start in finished:
            if isinstance(rows, BaseException):
                if not isinstance(rows, BackendError):
                    raise rows
                out.append((key, rows))
                continue
            latency = (time.perf_counter() - start) / gen.n
            out.append((key, [self.finish(row, gen, latency) for row in rows]))
        return out

    def _one(self, key, prompt, gen, seed):
        start = time.perf_counter()
        try:
            rows = self._generate(prompt, gen, seed)
        except BaseException as e:  # handed to the engine's thread, which decides
            rows = e
        self._done.put((key, rows, gen, start))

    def _generate(self, prompt: str, gen: GenerationConfig, seed: int) -> List[List[int]]:
        raise NotImplementedError


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def resolve_device(name: str) -> str:
    """'auto' is CUDA when present, else the CPU; asking for CUDA without it is a user error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this PyTorch sees no CUDA device (install a CUDA build of torch, or use "
                        "--device cpu)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def load_backend(name: str, model_path: str, initial_peers: Sequence[str] = (), dht_prefix: Optional[str] = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 1) -> Backend:
    """Load `model_path` as backend `name`; fp32 on the CPU gives both backends identical greedy tokens."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls).load(
        model_path, initial_peers=initial_peers, dht_prefix=dht_prefix, device=resolve_device(device),
        dtype=torch_dtype(dtype), batch_size=batch_size)


@contextlib.contextmanager
def open_backend(name: str, model_path: str, initial_peers: Sequence[str] = (), dht_prefix: Optional[str] = None,
                 num_servers: int = 2, workdir: Optional[Path] = None, **kw):
    """A backend ready to generate; for 'petals' without peers, a loopback swarm lives as long as it, its servers
    in the client's dtype (so a bfloat16 run's swarm check compares bfloat16 with bfloat16)."""
    with contextlib.ExitStack() as stack:
        if name == "petals" and not initial_peers:
            from ..swarm import LoopbackSwarm

            dtype = kw.get("dtype", "float32")
            print(f"starting a loopback swarm ({num_servers} servers, {dtype}) for {Path(model_path).name} ...",
                  file=sys.stderr)
            swarm = stack.enter_context(LoopbackSwarm(model_path, workdir or CACHE_DIR / "swarm", num_servers,
                                                      torch_dtype=dtype))
            initial_peers, dht_prefix = swarm.initial_peers, swarm.dht_prefix
        backend = load_backend(name, model_path, initial_peers, dht_prefix, **kw)
        stack.callback(backend.close)
        yield backend


def row_generators(gen: GenerationConfig, seed: int) -> list:
    """One generator per completion of a sampled request, seeded by the run's seed, the problem (`seed`) and
    the row: a row's draws depend neither on the batch, nor on the thread, nor on the backend, so sampled
    completions through the swarm can be checked token for token against local ones."""
    import torch

    return [torch.Generator().manual_seed(gen.seed * 1_000_003 + seed * 1_009 + j) for j in range(gen.n)]


def sample(logits, gen: GenerationConfig, generators):
    """One token per row: temperature, then top-k, then top-p (nucleus), as transformers' warpers do, then one
    draw per row from its own generator (`generators`: one per row, or one for all), by inverse CDF, so that a
    whole batch samples in one vectorised step and each row's draws do not depend on the others."""
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
    cdf = logits.softmax(-1).cumsum(-1)
    rows = generators if isinstance(generators, (list, tuple)) else [generators] * len(cdf)
    u = torch.tensor([torch.rand((), generator=g).item() for g in rows], dtype=cdf.dtype, device=cdf.device)
    # the first token whose cumulative probability exceeds u: never one of probability 0
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)
