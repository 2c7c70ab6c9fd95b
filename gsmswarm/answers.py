"""The GSM8K answer contract: gold after `####`, the model's final number, and whether they agree.

Three extraction filters are kept side by side in every record (as lm-evaluation-harness does), so format
failures show apart from reasoning failures: `strict` accepts only "The answer is N" / "#### N" (the
few-shot exemplars' form); `boxed` the last `\boxed{...}` holding a number (the form Qwen's own instruction
asks for: "put your final answer within \boxed{}"); `flexible` takes the last number anywhere.
`extract_answer` tries them in that order, so a record graded before `boxed` existed keeps its answer.
"""
import re
from decimal import Decimal, InvalidOperation
from typing import Optional

INVALID = "[invalid]"  # a failed parse; can never equal a real number (a parser returning 0 could)

_NUMBER = r"-?(?:\$\s*)?(?:\d[\d,]*\.?\d*|\.\d+)"
_STRICT_RE = re.compile(rf"(?:The answer is|####)\s*:?\s*({_NUMBER})", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUMBER)
CALC_RE = re.compile(r"<<[^>]*>>")  # calculator annotations such as <<16-3-4=9>>
_FRAC_RE = re.compile(r"\\d?frac\{(\d+)\}\{(\d+)\}")


def _normalise(number: str) -> str:
    """'$1,234.50.' -> '1234.5'; '18.00' -> '18'; '-0' -> '0'; unparseable -> INVALID."""
    s = number.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return INVALID
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _strict(completion: str) -> str:
    matches = _STRICT_RE.findall(CALC_RE.sub("", completion))
    return _normalise(matches[0]) if matches else INVALID


def _boxed(completion: str) -> str:
    r"""The last number inside the last `\boxed{...}` (braces balanced): `\boxed{\$1,200}` is 1200,
    `\boxed{18 \text{ eggs}}` 18, `\boxed{\frac{3}{4}}` 0.75."""
    start = completion.rfind("\\boxed{")
    if start < 0:
        return INVALID
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[j], 0)
        if depth == 0:
            inside = completion[i + 1:j].replace("\\$", "$")
            frac = _FRAC_RE.fullmatch(inside.strip())
            if frac:
                return _normalise(str(Decimal(frac[1]) / Decimal(frac[2]))) if Decimal(frac[2]) else INVALID
            return _flexible(inside)
    return INVALID  # cut off inside the box


def _flexible(completion: str) -> str:
    matches = _NUMBER_RE.findall(CALC_RE.sub("", completion))
    for m in reversed(matches):
        value = _normalise(m)
        if value != INVALID:
            return value
    return INVALID


FILTERS = {"strict": _strict, "boxed": _boxed, "flexible": _flexible}  # name -> completion -> pred, per completion


def gold_answer(answer_field: str) -> str:
    """The number after `####` in a GSM8K `answer` field, commas removed ("2,125" -> "2125")."""
    head, sep, tail = answer_field.rpartition("####")
    if not sep:
        raise ValueError(f"no '####' in answer field: {answer_field[-60:]!r}")
    gold = _normalise(tail.strip())
    if gold == INVALID:
        raise ValueError(f"no number after '####': {tail.strip()!r}")
    return gold


def extract_answer(completion: Optional[str]) -> str:
    """The model's final number: the strict form if present, else the boxed one, else the last number, else
    INVALID."""
    if not completion:
        return INVALID
    for read in FILTERS.values():
        pred = read(completion)
        if pred != INVALID:
            return pred
    return INVALID


def number_answer(value: str) -> str:
    """A program's returned number as a pred: floats rounded to 6 decimals (so 0.1 + 0.2 is 0.3), then
    normalised like every extracted answer."""
    try:
        return _normalise(format(round(float(value), 6), "f")) if "." in value or "e" in value else _normalise(value)
    except (ValueError, OverflowError):
        return INVALID


def is_correct(completion: str, answer_field: str) -> bool:
    return extract_answer(completion) == gold_answer(answer_field)
