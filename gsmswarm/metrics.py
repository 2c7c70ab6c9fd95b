"""Scores computed from records: accuracy with 95% Wilson intervals, majority votes and maj@k curves, and for
two runs on the same problems the exact McNemar test, a paired bootstrap interval of the difference, and Holm's
correction across a family of such tests. Extraction lives in answers.py; this module
only compares strings."""
import math
from collections import Counter
from typing import Dict, List, Sequence, Tuple

from .answers import INVALID, extract_answer


def wilson_interval(k: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95% Wilson score interval for k successes in n trials; sane at k=0 and small n, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact ends at k=0 and k=n: rounding may leave centre - half at +1e-18, above the accuracy itself
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def majority_vote(preds: Sequence[str]) -> str:
    """The most frequent valid pred; a tie goes to the pred seen first; INVALID only if nothing is valid."""
    valid = [p for p in preds if p != INVALID]
    if not valid:
        return INVALID
    counts = Counter(valid)
    top = max(counts.values())
    return next(p for p in valid if counts[p] == top)


def _proportion(hits: Sequence[bool], invalid: Sequence[bool]) -> Dict[str, float]:
    k, n = sum(hits), len(hits)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi,
            "invalid_rate": sum(invalid) / n if n else 0.0}


def accuracy(records: List[dict], filter_name: str = "answer") -> Dict[str, float]:
    """Accuracy of each record's `pred` ('answer') or of a named filter's vote over its completions."""
    if filter_name == "answer":
        preds = [r["pred"] for r in records]
    else:
        preds = [majority_vote(r["preds"][filter_name]) for r in records]
    return _proportion([p == r["gold"] for p, r in zip(preds, records)], [p == INVALID for p in preds])


def well_formed(record: dict) -> bool:
    """Whether a record's (first) answer is in its prompt's own form: the strict ("The answer is N") or boxed
    filter read one; PAL (no text filters): its program returned a number. The flexible filter's last-number
    fallback does not count, so a format failure is seen apart from a reasoning failure."""
    preds = record["preds"]
    if "strict" not in preds:
        return record["pred"] != INVALID
    return any(preds[f][0] != INVALID for f in ("strict", "boxed") if f in preds)


def answer_preds(record: dict) -> List[str]:
    """Each completion's answer; recomputed from the raw completions for records that predate the 'answer' filter."""
    return record["preds"].get("answer") or [extract_answer(c) for c in record["completions"]]


def maj_at_k(records: List[dict], k: int) -> Dict[str, float]:
    """Accuracy of the vote over each record's first k completions (one run with n samples gives every k <= n)."""
    if any(len(r["completions"]) < k for r in records):
        raise ValueError(f"maj@{k} needs at least {k} completions per record")
    preds = [majority_vote(answer_preds(r)[:k]) for r in records]
    return {"k": k, **_proportion([p == r["gold"] for p, r in zip(preds, records)], [p == INVALID for p in preds])}


def maj_curve(records: List[dict]) -> List[Dict[str, float]]:
    """maj@k for k = 1 .. the number of completions every record has."""
    n = min(len(r["completions"]) for r in records)
    return [maj_at_k(records, k) for k in range(1, n + 1)]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against p = 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(records_a: List[dict], records_b: List[dict]) -> Dict[str, float]:
    """Compare two runs on the problems both solved: counts of the four outcomes, the exact McNemar p-value, and
    the difference in accuracy (a minus b) with its paired bootstrap 95% interval."""
    a = {r["idx"]: r["correct"] for r in records_a}
    b = {r["idx"]: r["correct"] for r in records_b}
    common = sorted(a.keys() & b.keys())
    both = sum(a[i] and b[i] for i in common)
    only_a = sum(a[i] and not b[i] for i in common)
    only_b = sum(b[i] and not a[i] for i in common)
    diff, lo, hi = paired_bootstrap([a[i] for i in common], [b[i] for i in common]) if common else (0.0, 0.0, 0.0)
    return {"n": len(common), "both_right": both, "only_a": only_a, "only_b": only_b,
            "both_wrong": len(common) - both - only_a - only_b, "p_value": mcnemar_exact(only_a, only_b),
            "diff": diff, "diff_ci_low": lo, "diff_ci_high": hi}


def first_difference(a: Sequence, b: Sequence) -> int:
    """The first index at which two sequences differ (the shorter one's length if one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def identical_completions(records_a: List[dict], records_b: List[dict]) -> Dict[str, int]:
    """On the problems both runs finished: how many have exactly the same completions, the same pred, and how many
    each solves. The evidence that one backend's run stands for the other's (greedy decoding in float32 gives the
    same text; in 16-bit dtypes completions may part at ties, and the answers and accuracy say what that costs).
    Sampled runs also count rows: one row that parts mid-completion makes its whole problem differ, and the
    rows say how rare that is."""
    a, b = {r["idx"]: r for r in records_a}, {r["idx"]: r for r in records_b}
    common = sorted(a.keys() & b.keys())
    return {"n": len(common), "identical": sum(a[i]["completions"] == b[i]["completions"] for i in common),
            "rows": sum(len(a[i]["completions"]) for i in common),
            "identical_rows": sum(x == y for i in common for x, y in zip(a[i]["completions"], b[i]["completions"])),
            "same_pred": sum(a[i]["pred"] == b[i]["pred"] for i in common),
            "correct_a": sum(a[i]["correct"] for i in common), "correct_b": sum(b[i]["correct"] for i in common)}


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_resamples: int = 10_000,
                     seed: int = 0) -> Tuple[float, float, float]:
    """Accuracy of a minus accuracy of b on the same problems, with a 95% percentile interval from resampling
    problems (pairs stay together, so the interval reflects how correlated the two runs are)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.int8), np.asarray(b, dtype=np.int8)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty outcome lists")
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_resamples, len(diff)))
    lo, hi = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi)


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: a family of tests keeps its error rate at alpha
    when each adjusted p is compared with alpha (uniformly more powerful than Bonferroni)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
