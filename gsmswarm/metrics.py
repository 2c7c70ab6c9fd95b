"""Scores computed from records: accuracy with a 95% Wilson interval, per extraction filter."""
import math
from typing import Dict, List, Tuple

from .answers import INVALID


def wilson_interval(k: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95% Wilson score interval for k successes in n trials; sane at k=0 and small n, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(records: List[dict], filter_name: str = "answer") -> Dict[str, float]:
    """Accuracy of `pred` (filter 'answer') or of a named filter's first pred, with its interval."""
    if filter_name == "answer":
        hits = [r["correct"] for r in records]
        invalid = [r["pred"] == INVALID for r in records]
    else:
        hits = [r["preds"][filter_name][0] == r["gold"] for r in records]
        invalid = [r["preds"][filter_name][0] == INVALID for r in records]
    k, n = sum(hits), len(records)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi,
            "invalid_rate": sum(invalid) / n if n else 0.0}
