"""The GSM8K task: problems from the upstream JSONL files, and a dev split carved from train."""
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

from .answers import CALC_RE, gold_answer
from .config import REPO_DIR, UserError

DATA_DIR = REPO_DIR / "grade_school_math" / "data"
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


@lru_cache(maxsize=None)
def _load_file(name: str) -> Tuple[Problem, ...]:
    path = DATA_DIR / f"{name}.jsonl"
    problems = []
    for i, row in enumerate(read_jsonl(path)):
        try:
            problems.append(Problem(i, row["question"], row["answer"], gold_answer(row["answer"])))
        except (KeyError, ValueError) as e:
            raise UserError(f"{path}:{i + 1}: not a GSM8K problem ({e})") from None
    return tuple(problems)


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
