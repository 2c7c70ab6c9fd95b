"""The dev selection of the chat regime: each method's strongest prompt variant, chosen on dev problems only.

The study model is an instruct model prompted, in the first study, in a plain `Q:`/`A:` frame it was not tuned
on. Before a method is run on the test set in the model's own chat format, its variants (where the instruction
goes, exemplars as turns or as reference text, how many retrieved exemplars) are run on the same first 200
dev problems (carved from train; the test set is never read), and the rule below picks one per method. Every
candidate is an ordinary resumable run under `method_results/dev/`; `python -m gsmswarm select` runs the missing
ones and prints the table, and `--markdown docs/chat_regime.md` writes it there.
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

from .config import GenerationConfig, RunConfig

OUTPUT_DIR = "method_results/dev"
COMMON = {"backend": "local", "dtype": "bfloat16", "split": "dev", "limit": 200, "output_dir": OUTPUT_DIR}
MARKERS = ("<!-- selection: generated from method_results/dev/ by `python -m gsmswarm select --markdown "
           "docs/chat_regime.md` -->", "<!-- selection end -->")
RULE = ("the variant with the highest dev accuracy; within one problem of it (0.005 on 200), the one that "
        "generates fewer tokens")


class Candidate(NamedTuple):
    method: str  # the method family it is a variant of
    label: str
    fields: dict  # RunConfig / GenerationConfig fields beside COMMON
    train: Optional[dict] = None  # the train-prompt settings (TuningConfig fields) of its soft prompt


CANDIDATES = [
    Candidate("prompt only", "plain CoT 8-shot (the first study's frame)", {"prompt": "cot_8shot"}),
    Candidate("prompt only", "chat zero-shot, instruction in the user turn", {"prompt": "chat_zeroshot"}),
    Candidate("prompt only", "chat zero-shot, instruction as the system turn", {"prompt": "chat_zeroshot_system"}),
    Candidate("prompt only", "chat 8-shot, the exemplars as turns", {"prompt": "chat_8shot"}),
    *(Candidate("RAG", f"chat, k={k} exemplars as reference text in the user turn",
                {"method": "rag", "prompt": "chat_rag_context", "rag_k": k}) for k in (2, 4, 8)),
    *(Candidate("RAG", f"chat, k={k} exemplars as turns", {"method": "rag", "prompt": "chat_rag_turns", "rag_k": k})
      for k in (2, 4, 8)),
    # the reference text with the instruction where the prompt-only choice has it (added after the others ran:
    # RAG at its strongest form, and the form the chat soft prompt was trained in front of); k=2 only, the best k
    # of both forms above
    Candidate("RAG", "chat, k=2 exemplars as reference text, instruction as the system turn",
              {"method": "rag", "prompt": "chat_rag_context_system", "rag_k": 2}),
    Candidate("RAG", "plain RAG k=8 (the first study's frame)", {"method": "rag", "prompt": "rag_cot", "rag_k": 8}),
    # the ReAct agent (search, calculate, finish): its 8 example traces as plain text, or as chat turns
    Candidate("agent", "plain ReAct, 8 example traces", {"method": "agent"}),
    Candidate("agent", "chat ReAct, the 8 example traces as turns", {"method": "agent", "prompt": "chat_agent_8shot"}),
    # a soft prompt in front of the strongest zero-shot chat prompt (the system-turn instruction, 0.310 on dev
    # against 0.290 in the user turn), trained through the swarm to write the dataset's reference solutions as the
    # answer turn, or the model's own correct answers (self-distillation, gsmswarm.tuning); deep PT then learns
    # the target PT's choice takes (the own answers: 0.330 on dev against 0.235)
    Candidate("PT", "ptune, 16 tokens, trained on the reference solutions",
              {"prompt": "chat_zeroshot_system"}, {"backend": "petals", "prompt": "chat_zeroshot_system"}),
    Candidate("PT", "ptune, 16 tokens, trained on the model's own correct answers",
              {"prompt": "chat_zeroshot_system"},
              {"backend": "petals", "prompt": "chat_zeroshot_system", "target": "own"}),
    Candidate("deep PT", "deep ptune, 16 tokens, trained on the model's own correct answers",
              {"prompt": "chat_zeroshot_system"},
              {"backend": "petals", "prompt": "chat_zeroshot_system", "target": "own", "tuning_mode": "deep_ptune"}),
]

METHODS = tuple(dict.fromkeys(c.method for c in CANDIDATES))  # the method families, in the table's order


def candidate_config(c: Candidate, **common) -> Tuple[RunConfig, GenerationConfig]:
    from .study import run_configs

    return run_configs({**COMMON, **common, **c.fields}, c.train)


def candidate_summaries(summaries: List[dict], **common) -> Dict[str, dict]:
    """The candidates run so far, by label (found by their run names, as `run` gives them)."""
    from .results import run_name

    by_id = {s["run_id"]: s for s in summaries}
    names = {c.label: run_name(*candidate_config(c, **common)) for c in CANDIDATES}
    return {label: by_id[name] for label, name in names.items() if name in by_id}


def choose(found: Dict[str, dict]) -> Dict[str, str]:
    """Per method family, the label of the variant RULE picks among those run on all the dev problems (a run
    still going is listed in the table but cannot be chosen: a few lucky problems would win)."""
    chosen = {}
    for method in METHODS:
        runs = [(c.label, found[c.label]) for c in CANDIDATES if c.method == method and c.label in found
                and found[c.label]["metrics"]["answer"]["n"] >= COMMON["limit"]]
        if not runs:
            continue
        best = max(s["metrics"]["answer"]["accuracy"] for _, s in runs)
        close = [(c, s) for c, s in runs if s["metrics"]["answer"]["accuracy"] >= best - 0.005]
        chosen[method] = min(close, key=lambda cs: _mean_tokens(cs[1]))[0]
    return chosen


def _mean_tokens(summary: dict) -> float:
    return summary["n_completion_tokens"] / max(summary["metrics"]["answer"]["n"], 1)


def selection_rows(found: Dict[str, dict]) -> List[tuple]:
    """The table: every candidate run, its accuracy with the 95% interval, each answer filter's accuracy,
    answers with no number, answers cut by the token limit, output length, and which one the rule chose. (No time
    column: a run paused while a benchmark timed the machine counts its pause in its wall time.)"""
    from .report import _ci, _commits

    chosen = set(choose(found).values())
    rows = [("method", "variant", "n", "correct", "accuracy [95% CI]", "strict", "boxed", "flexible",
             "no answer", "truncated", "tokens/answer", "chosen", "commits")]
    for c in CANDIDATES:
        if c.label not in found:
            continue
        s = found[c.label]
        m = s["metrics"]
        rows.append((c.method, c.label, str(m["answer"]["n"]), str(m["answer"]["correct"]),
                     f"{m['answer']['accuracy']:.3f} {_ci(m['answer'])}",
                     *(f"{m[f]['accuracy']:.3f}" if f in m else "-" for f in ("strict", "boxed", "flexible")),
                     f"{m['answer']['invalid_rate']:.3f}", f"{s['truncated_rate']:.3f}", f"{_mean_tokens(s):.0f}",
                     "**yes**" if c.label in chosen else "", _commits(s)))
    return rows
