"""The GSM8K answer contract: gold after `####`, the model's final number, and whether they agree.

Two extraction filters are kept side by side in every record (as lm-evaluation-harness does), so format
failures show apart from reasoning failures: `strict` accepts only "The answer is N" / "#### N";
`flexible` takes the last number anywhere. `extract_answer` is strict first, flexible as the fallback.
"""
import re
from decimal import Decimal, InvalidOperation
from typing import Optional

INVALID = "[invalid]"  # a failed parse; can never equal a real number (a parser returning 0 could)

_NUMBER = r"-?(?:\$\s*)?(?:\d[\d,]*\.?\d*|\.\d+)"
_STRICT_RE = re.compile(rf"(?:The answer is|####)\s*:?\s*({_NUMBER})", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUMBER)
CALC_RE = re.compile(r"<<[^>]*>>")  # calculator annotations such as <<16-3-4=9>>


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


def _flexible(completion: str) -> str:
    matches = _NUMBER_RE.findall(CALC_RE.sub("", completion))
    for m in reversed(matches):
        value = _normalise(m)
        if value != INVALID:
            return value
    return INVALID


FILTERS = {"strict": _strict, "flexible": _flexible}  # name -> completion -> pred; recorded per completion


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
    """The model's final number: the strict form if present, else the last number, else INVALID."""
    if not completion:
        return INVALID
    strict = _strict(completion)
    return strict if strict != INVALID else _flexible(completion)


def number_answer(value: str) -> str:
    """A program's returned number as a pred: floats rounded to 6 decimals (so 0.1 + 0.2 is 0.3), then
    normalised like every extracted answer."""
    try:
        return _normalise(format(round(float(value), 6), "f")) if "." in value or "e" in value else _normalise(value)
    except (ValueError, OverflowError):
        return INVALID


def is_correct(completion: str, answer_field: str) -> bool:
    return extract_answer(completion) == gold_answer(answer_field)
