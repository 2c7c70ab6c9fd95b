"""Run settings as dataclasses: defaults and their meaning in one place; CLI flags map 1:1 onto fields."""
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple


REPO_DIR = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("GSMSWARM_CACHE", REPO_DIR / ".cache"))  # converted models, swarm logs; not in git


class UserError(Exception):
    """Bad input from the user (flag, file, swarm address): the CLI prints it as one line, no traceback."""


def _help(text: str, aliases=(), **kw):
    return field(metadata={"help": text, "aliases": aliases}, **kw)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = _help("most tokens generated per completion", default=256)
    temperature: float = _help("0 = greedy decoding; > 0 samples", default=0.0)
    top_p: float = _help("nucleus sampling mass (sampling only)", default=1.0)
    top_k: int = _help("sample from the k likeliest tokens, 0 = all (sampling only)", default=0)
    n: int = _help("completions per problem (self-consistency samples k > 1 and votes)", default=1,
                   aliases=("--samples",))
    seed: int = _help("seed for sampling", default=0)
    stop: Tuple[str, ...] = _help("stop strings; the first one is the prompts' exemplar separator",
                                  default=("\n\n", "\nQ:"))

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if self.n < 1:
            raise UserError(f"--n must be >= 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise UserError("--n > 1 needs --temperature > 0: greedy decoding gives n identical completions")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class RunConfig:
    method: str = _help("cot (chain-of-thought) or self_consistency (cot + --samples k + a vote)", default="cot")
    backend: str = _help("'petals' (through a swarm) or 'local' (transformers on this machine)",
                         default="petals")
    model: str = _help("'smollm2-135m' (embedded), a local Hugging Face folder, or a hub id",
                       default="smollm2-135m")
    prompt: str = _help("prompt file in prompts/ without .txt", default="cot_8shot")
    split: str = _help("'test', 'train' or 'dev' (500 problems carved from train with a fixed seed)",
                       default="test")
    limit: Optional[int] = _help("first N problems of the split (default: all)", default=None)
    output_dir: str = _help("results go to OUTPUT_DIR/<method>/<run>.jsonl", default="method_results")
    initial_peers: Tuple[str, ...] = _help(
        "swarm multiaddrs (default: $INITIAL_PEERS, else start a loopback swarm for this run)",
        default=tuple(os.environ.get("INITIAL_PEERS", "").split()))
    dht_prefix: Optional[str] = _help("name the swarm serves the model under (default: derived from --model)",
                                      default=None)
    num_servers: int = _help("servers in a loopback swarm started for this run", default=2)

    def __post_init__(self):
        if self.split not in ("test", "train", "dev"):
            raise UserError(f"--split must be test, train or dev, got {self.split!r}")
        if self.backend not in ("petals", "local"):
            raise UserError(f"--backend must be petals or local, got {self.backend!r}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        if any(not p.startswith("/") for p in self.initial_peers):
            raise UserError(f"--initial-peers takes multiaddrs such as /ip4/127.0.0.1/tcp/PORT/p2p/ID, "
                            f"got {' '.join(self.initial_peers)!r}")


def as_dict(config) -> dict:
    return dataclasses.asdict(config)
