"""Why a record is wrong: exactly one category per wrong record, checked in this order.

- backend_error: generation failed (the record carries an `error`); not the model's fault.
- truncated: the completion hit the token limit before an answer.
- no_answer: the completion ended but has no number we can read.
- arithmetic: some written step `a op b = c` is false, and a calculator would have fixed it.
- reasoning: every written step is right (or there are none), yet the answer is wrong.
"""
import re
from fractions import Fraction
from typing import Dict, List, Optional

from .answers import INVALID

CATEGORIES = ("backend_error", "truncated", "no_answer", "arithmetic", "reasoning")
_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_OP = r"[-+*/x×÷]"
# a whole chain `a op b op c = d`, starting where no operator or digit precedes it
_STEP_RE = re.compile(rf"(?<![\d.,])(?<!{_OP}\s)(?<!{_OP})({_NUM}(?:\s*{_OP}\s*{_NUM})+)\s*=\s*({_NUM})(?![\d])")
_TOKEN_RE = re.compile(rf"{_NUM}|{_OP}")


def _value(text: str) -> Fraction:
    return Fraction(text.replace("$", "").replace(",", ""))


def _evaluate(expression: str) -> Optional[Fraction]:
    """Left side of a step, with * and / before + and -; None if it cannot be evaluated."""
    terms, ops = [], []
    for token in _TOKEN_RE.findall(expression):
        if re.fullmatch(_OP, token):
            ops.append({"x": "*", "×": "*", "÷": "/"}.get(token, token))
        else:
            if len(terms) > len(ops):  # "16 -3": a signed number right after a number means subtraction
                ops.append("+")
            terms.append(_value(token))
    if len(terms) != len(ops) + 1:
        return None
    sums, signs = [terms[0]], []
    for op, term in zip(ops, terms[1:]):
        if op in "*/":
            if op == "/" and term == 0:
                return None
            sums[-1] = sums[-1] * term if op == "*" else sums[-1] / term
        else:
            signs.append(op)
            sums.append(term)
    return sums[0] + sum(t if op == "+" else -t for op, t in zip(signs, sums[1:]))


def arithmetic_slips(completion: str) -> List[str]:
    """Every written step `a op b ... = c` whose c is wrong (exact rational arithmetic)."""
    slips = []
    for left, right in _STEP_RE.findall(completion):
        value = _evaluate(left)
        if value is not None and value != _value(right):
            slips.append(f"{left} = {right}")
    return slips


def categorise(record: dict) -> Optional[str]:
    """The category of a wrong record; None for a correct one."""
    if record.get("error"):
        return "backend_error"
    if record["correct"]:
        return None
    if record["truncated"][0]:
        return "truncated"
    if record["pred"] == INVALID:
        return "no_answer"
    if arithmetic_slips(record["completions"][0]):
        return "arithmetic"
    return "reasoning"


def taxonomy(records: List[dict]) -> Dict[str, int]:
    counts = {c: 0 for c in CATEGORIES}
    for r in records:
        category = categorise(r)
        if category:
            counts[category] += 1
    return counts
