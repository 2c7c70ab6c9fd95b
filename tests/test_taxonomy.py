import pytest

from gsmswarm.answers import INVALID
from gsmswarm.taxonomy import arithmetic_slips, categorise, taxonomy


def _rec(completion, pred, gold="18", truncated=False, error=None):
    return {"completions": [completion], "pred": pred, "gold": gold, "correct": pred == gold,
            "truncated": [truncated], "error": error}


@pytest.mark.parametrize("record, category", [
    (_rec("She makes 9 * 2 = 18. The answer is 18.", "18"), None),
    (_rec("", INVALID, error="swarm lost block 3"), "backend_error"),
    (_rec("9 * 2 = 18, 9 * 2 = 18, 9 * 2 = 18, 9 * 2", "2", truncated=True), "truncated"),
    (_rec("She sells the eggs at the market.", INVALID), "no_answer"),
    (_rec("16 - 3 - 4 = 9. 9 * 2 = 19. The answer is 19.", "19"), "arithmetic"),
    (_rec("16 - 3 = 13. 13 * 2 = 26. The answer is 26.", "26"), "reasoning"),
    (_rec("She has 16 eggs. The answer is 16.", "16"), "reasoning"),
])
def test_each_category(record, category):
    assert categorise(record) == category


@pytest.mark.parametrize("text, slips", [
    ("16 - 3 - 4 = 9 eggs", []),
    ("16 - 3 - 4 = 10", ["16 - 3 - 4 = 10"]),
    ("5 x 3 = 15 and 2 + 3 * 4 = 14", []),
    ("2 + 3 * 4 = 20", ["2 + 3 * 4 = 20"]),
    ("$1,200 / 4 = $300", []),
    ("10 / 4 = 2.5", []),
    ("1/2 x 2 = 2", ["1/2 x 2 = 2"]),
    ("9 + 20 is 29", []),
])
def test_arithmetic_slips(text, slips):
    assert arithmetic_slips(text) == slips


def test_taxonomy_counts_every_wrong_record_once():
    records = [_rec("The answer is 18.", "18"), _rec("no idea", INVALID), _rec("2 + 2 = 5. The answer is 5.", "5")]
    counts = taxonomy(records)
    assert sum(counts.values()) == 2 and counts["no_answer"] == 1 and counts["arithmetic"] == 1
