"""The GSM8K task: its problems, also as 🤗 datasets, and a dev split carved from train.

The shipped JSONL files (byte-identical to openai/grade-school-math) are the default source and need no network.
`--data hub` loads `openai/gsm8k` from the Hugging Face hub instead, and `--data DIR` a copy of that dataset's
repository; either is checked row by row against the shipped files, because problem ids are line numbers of
those files: every record, the dev split and the retrieval index refer to problems by them.
"""
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

from .answers import CALC_RE, gold_answer
from .config import CACHE_DIR, REPO_DIR, UserError, one_line

DATA_DIR = REPO_DIR / "grade_school_math" / "data"
HUB_DATASET = ("openai/gsm8k", "main")  # the hub's GSM8K; its other config, "socratic", has other solutions
DATASETS_CACHE = CACHE_DIR / "datasets"  # what `--data hub` downloads, beside the converted models
_source = "local"  # where problems come from in this process; see use_source
DEV_SIZE = 500  # dev problems carved from train: prompt work happens here, test stays untouched
DEV_SEED = 0  # fixed, so "dev" means the same problems everywhere


@dataclass(frozen=True)
class Problem:
    idx: int  # line number (0-based) in the upstream file of its split; dev keeps train's numbering
    question: str
    answer: str  # the worked solution, with <<calc>> annotations and the final `#### N`
    gold: str  # the number after ####, commas removed

    @property
    def solution(self) -> str:
        """The worked solution as plain text: calculator annotations and the `#### N` line removed."""
        return CALC_RE.sub("", self.answer.rpartition("####")[0]).strip()

    @property
    def chain_of_thought(self) -> str:
        """The solution in the prompt files' exemplar style: its steps as one paragraph, then "The answer is N."
        What retrieved exemplars show and what a soft prompt is trained to make the model write."""
        steps = " ".join(line.strip() for line in self.solution.split("\n") if line.strip())
        return f"{steps} The answer is {self.gold}."


def read_jsonl(path: Path) -> List[dict]:
    """Parse a JSONL file; a bad line raises UserError naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    return rows


def use_source(source: str) -> None:
    """Take this process's problems from `source`: 'local' (the shipped files), 'hub' or a folder. A source other
    than the shipped files is loaded and checked here, so a bad one fails before any model is loaded."""
    global _source
    if source not in ("local", "hub") and not Path(source).is_dir():
        raise UserError(f"--data {source}: use local, hub, or a folder holding a copy of the hub's openai/gsm8k")
    if source == _source:
        return
    previous, _source = _source, source
    _load_file.cache_clear()
    try:
        if source != "local":
            for name in ("train", "test"):
                _load_file(name)
    except UserError:
        _source = previous  # keep the source that worked
        _load_file.cache_clear()
        raise


def gsm8k_dataset(name: str):
    """Split 'train' or 'test' as a `datasets.Dataset` with columns question and answer, from this process's
    source (see use_source), unchecked: the shipped file in memory (no network), or the hub's dataset through
    its cache. Row i is problem i."""
    import datasets

    if _source == "local":
        return datasets.Dataset.from_list(read_jsonl(DATA_DIR / f"{name}.jsonl"))
    path, config = HUB_DATASET if _source == "hub" else (_source, HUB_DATASET[1])
    datasets.logging.set_verbosity_error()  # keeps its progress bars; drops "storage unreachable" for a folder
    offline = datasets.config.HF_DATASETS_OFFLINE
    datasets.config.HF_DATASETS_OFFLINE = offline or _source != "hub"  # a folder: no try of the hub's storage
    try:
        return datasets.load_dataset(path, config, split=name, cache_dir=str(DATASETS_CACHE))
    except Exception as e:  # the hub unreachable, offline mode, a folder of something else: all one line
        raise UserError(f"--data {_source}: cannot load {path} ({config}) split {name}: {one_line(e)} (the hub needs "
                        f"a network with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0, or an earlier download)") from None
    finally:
        datasets.config.HF_DATASETS_OFFLINE = offline


@lru_cache(maxsize=None)
def _load_file(name: str) -> Tuple[Problem, ...]:
    path = DATA_DIR / f"{name}.jsonl"
    problems = []
    for i, row in enumerate(_rows(name)):
        try:
            problems.append(Problem(i, row["question"], row["answer"], gold_answer(row["answer"])))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{i + 1}: not a GSM8K problem ({e})") from None
    return tuple(problems)


def _rows(name: str) -> List[dict]:
    """The rows of split `name` from this process's source. The shipped file is read directly: gsm8k_dataset
    gives the same rows as a Dataset (tests/test_data.py), and importing datasets (pandas, pyarrow) would add
    two to three seconds to the start of every run and test process for the same rows. Another source is read as
    a Dataset and checked against the shipped file."""
    path = DATA_DIR / f"{name}.jsonl"
    shipped = read_jsonl(path)
    if _source == "local":
        return shipped
    dataset = gsm8k_dataset(name)
    if not {"question", "answer"} <= set(dataset.column_names):
        raise UserError(f"--data {_source}: {name} has columns {dataset.column_names}, not question and answer")
    if len(dataset) != len(shipped):
        raise UserError(f"--data {_source}: {name} has {len(dataset)} problems, {path} {len(shipped)}")
    for i, (question, answer, want) in enumerate(zip(dataset["question"], dataset["answer"], shipped)):
        if (question, answer) != (want["question"], want["answer"]):
            raise UserError(f"--data {_source}: {name} row {i} differs from {path}:{i + 1}; problem ids are "
                            f"line numbers of the shipped files, so only the same problems in the same order do")
    return shipped  # row for row the source's, now checked


def dev_indices() -> List[int]:
    order = list(range(len(_load_file("train"))))
    random.Random(DEV_SEED).shuffle(order)
    return sorted(order[:DEV_SIZE])


def load_split(name: str, limit: Optional[int] = None) -> List[Problem]:
    """Problems of 'train', 'test' or 'dev', in file order; the first `limit` of them if given."""
    if name == "dev":
        train = _load_file("train")
        problems = [train[i] for i in dev_indices()]
    elif name in ("train", "test"):
        problems = list(_load_file(name))
    else:
        raise UserError(f"unknown split {name!r}: use train, test or dev")
    return problems[:limit]
