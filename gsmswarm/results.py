"""Results: one JSON line per problem, appended and flushed as soon as it is solved, so a run can resume.

A run's file is `<output_dir>/<method>/<run>.jsonl`; `<run>.summary.json` beside it holds the resolved
config and the aggregates. A problem whose generation failed after the backend's retries is recorded with its
`error` (and no completions), so it is neither lost nor graded; solving it again (`--retry-errors`) appends a
new record for the same problem, and the last record of a problem is the one that counts. A torn last line (the process died mid-write) is dropped on resume; any other
malformed line stops with an error naming file and line, and the file is left untouched.
"""
import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

from .config import REPO_DIR, UserError



# The record: one JSON object per problem. Every method writes these fields; a method module adds its own
# (`RECORD_FIELDS` there). Documented, with examples, in method_results/README.md; tests/test_results.py checks
# every committed run against them.
RECORD_FIELDS = {
    "run_id": "the run's name (its file name without .jsonl)",
    "method": "cot, self_consistency, rag, pal, calculator or agent",
    "backend": "petals or local",
    "model": "the --model given (a name, a folder or a hub id)",
    "prompt": "prompt file name", "prompt_hash": "sha256 of the prompt file (12 hex digits)",
    "gen": "generation settings (GenerationConfig)",
    "commit": "git commit of the code that wrote the record (-dirty: uncommitted code changes)",
    "idx": "the problem's line in its split (0-based)", "question": "the problem text",
    "gold": "the number after #### (commas removed)",
    "completions": "raw model text, one per sampled completion",
    "preds": "per filter, each completion's answer (pal: 'answer' only, the program's value; older pal records "
             "repeat it under strict and flexible)",
    "pred": "the answer (the vote over completions)", "correct": "pred == gold",
    "truncated": "per completion: stopped by the token limit", "n_prompt_tokens": "tokens in the prompt",
    "n_completion_tokens": "per completion", "latency_s": "generation time of this problem's requests",
    "error": "null, or the backend error that left the problem unsolved (then no completions)",
}
EARLIER_FIELDS = {  # fields that only older records have
    "rag": "null on methods other than rag (written before each method declared its own fields)",
}
LATER_FIELDS = {  # fields that records made before they existed lack
    "split": "test, train or dev (absent: test)", "soft_prompt": "null, or its path, mode, length, sha256 (absent: none)",
    "dtype": "weights' dtype (absent: float32)", "batch_size": "the engine's batch size (absent: 1)",
    "wall_s": "seconds since the run's previous record (absent: problems ran one at a time)",
    "isolation": "pal, calculator and agent: bwrap or unsafe (absent: the process fence, before the isolation)",
}


def dtype_of(fields: dict) -> str:
    """The weights' dtype of a record or a summary's config: runs from before it was recorded ran in float32."""
    return fields.get("dtype", "float32")


def answer_fields(problem, prompt: str, backend, completions, preds: Dict[str, List[str]]) -> dict:
    """The record fields of a solved problem, from `completions` to `latency_s` in RECORD_FIELDS: the one builder
    every method calls, so none leaves a field out or fills it its own way. `preds` holds each completion's
    answer per filter that applies to the method ('answer' always; the text filters where the answer is read
    from text); `pred` is the vote over the 'answer' preds."""
    from .metrics import majority_vote

    pred = majority_vote(preds["answer"])
    return {
        "completions": [c.text for c in completions], "preds": preds, "pred": pred, "correct": pred == problem.gold,
        "truncated": [c.truncated for c in completions], "n_prompt_tokens": backend.n_tokens(prompt),
        "n_completion_tokens": [len(c.token_ids) for c in completions],
        "latency_s": round(sum(c.latency_s for c in completions), 3),
    }


def model_short(model: str) -> str:
    """A model's name in run names: the last part of its path or hub id, lower case."""
    return Path(model.rstrip("/")).name.lower()


def run_name(config, gen) -> str:
    """`<method>__<backend>__<model>__<prompt>[+<soft prompt>][<method's tag>]__<split>__n<n>__t<temp>__s<seed>[__<dtype>]`
    (`config`: RunConfig, `gen`: GenerationConfig): the file name says the config (rag's tag: `@k<k>-<order>`)."""
    prompt = config.prompt
    if config.soft_prompt:
        prompt += "+" + Path(config.soft_prompt.rstrip("/")).name
    from .methods import get_method

    method = get_method(config.method)
    prompt += method.run_tag(config) if hasattr(method, "run_tag") else ""
    dtype = "" if config.dtype == "float32" else f"__{config.dtype}"  # float32 runs kept their names from before
    return (f"{config.method}__{config.backend}__{model_short(config.model)}__{prompt}__{config.split}__n{gen.n}"
            f"__t{gen.temperature:g}__s{gen.seed}{dtype}")


def records_path(config, gen) -> Path:
    """Where `run` appends a run's records: `<output_dir>/<method>/<run name>.jsonl`."""
    return Path(config.output_dir) / config.method / f"{run_name(config, gen)}.jsonl"


def git_commit(repo: Path = REPO_DIR) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10)
        # "dirty" means code that differs from the commit; results, trained prompts, notebooks and prose (the
        # README's tables are rewritten by `summarize` while runs go on) do not change what this run computes.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)method_results", ":(exclude)prompt_tuning/*/*", ":(exclude)notebooks",
                                ":(exclude)*.md"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@functools.lru_cache(maxsize=None)
def process_commit() -> str:
    """The commit of the code this process runs: `git_commit` when it is first asked, at its first run or
    training step (the package's modules load then). A study of many arms or a long training goes on running that
    code while the repository moves on; asking again would name a later commit it never ran."""
    return git_commit()


def read_records(path) -> List[dict]:
    """The last complete record of each problem in a results file, by idx (a run with many problems in flight
    appends them as they finish); UserError naming file:line for a malformed line."""
    path, records = Path(path), []
    if not path.exists():
        return records
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # no newline after it: a torn write of the last record
                break
            raise UserError(f"{path}:{lineno}: malformed JSON line ({e.msg}); fix or remove it") from None
    return sorted({r["idx"]: r for r in records}.values(), key=lambda r: r["idx"])


def graded(records: List[dict]) -> List[dict]:
    """The records that have an answer to grade: all but backend errors."""
    return [r for r in records if not r.get("error")]


class ResultsWriter:
    """Append records of one run; knows which problems are already done."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = read_records(self.path)
        self.done: Dict[int, dict] = {r["idx"]: r for r in records}
        self._drop_torn_tail()
        self._file = None  # opened on the first record: a run that stops before any leaves no empty file

    def _drop_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:])
                f.write(b"\n")  # a complete record that only lacks its newline stays
            except json.JSONDecodeError:
                f.truncate(start)  # only the unfinished last line goes

    def write(self, record: dict) -> None:
        if record["idx"] in self.done and not self.done[record["idx"]].get("error"):
            raise ValueError(f"problem {record['idx']} is already in {self.path}")
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[record["idx"]] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_json(path: Path, data: dict) -> None:
    """Write a JSON file atomically: readers see the old file or the new one, never half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def records_frame(records: List[dict]):
    """One row per graded problem: the columns the notebooks tabulate and plot."""
    import pandas as pd

    return pd.DataFrame([{
        "idx": r["idx"], "gold": r["gold"], "pred": r["pred"], "correct": r["correct"],
        **{f"pred_{name}": preds[0] for name, preds in r["preds"].items()},
        "n_completion_tokens": r["n_completion_tokens"][0], "truncated": r["truncated"][0],
        "latency_s": r["latency_s"], "completion": r["completions"][0],
    } for r in graded(records)])


def load_runs(output_dir: str = "method_results") -> List[dict]:
    """Summaries of every run under `output_dir` (each with its `path`), sorted by run name."""
    runs = []
    for p in sorted(Path(output_dir).glob("*/*.summary.json")):
        summary = json.loads(p.read_text())
        summary["path"] = str(p)
        runs.append(summary)
    return runs
