import pytest

from gsmswarm.answers import FILTERS, INVALID, extract_answer, gold_answer, is_correct
from gsmswarm.data import DATA_DIR, read_jsonl


@pytest.mark.parametrize("completion, expected", [
    ("There are 15 trees. 21 - 15 = 6. The answer is 6.", "6"),
    ("The answer is $1,234.50.", "1234.5"),
    ("The answer is 18.00", "18"),
    ("The answer is: 72 dollars", "72"),
    ("#### 2,125", "2125"),
    ("She made <<9*2=18>>18 dollars. The answer is 18.", "18"),
    ("So 16 - 3 = 13 eggs", "13"),  # flexible: last number, and '- 3' is not -3
    ("The temperature fell to -5 degrees", "-5"),
    ("It is .5 of the cake", "0.5"),
    ("The answer is 007.", "7"),
    ("It costs $ 40 in total", "40"),
    ("The answer is 6. Then 7 more.", "6"),  # strict wins over the last number
    ("I do not know.", INVALID),
    ("", INVALID),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion, strict, flexible", [
    ("5 + 4 = 9. The answer is 9.", "9", "9"),
    ("5 + 4 = 9", INVALID, "9"),
    ("The answer is unclear", INVALID, INVALID),
    ("<<5+4=9>>", INVALID, INVALID),  # annotations are stripped before extraction
])
def test_filters_are_recorded_apart(completion, strict, flexible):
    assert FILTERS["strict"](completion) == strict
    assert FILTERS["flexible"](completion) == flexible


@pytest.mark.parametrize("field, gold", [("a\n#### 2,125", "2125"), ("x\n#### -3", "-3"), ("#### 18.0", "18")])
def test_gold_answer(field, gold):
    assert gold_answer(field) == gold


@pytest.mark.parametrize("field", ["no marker 42", "#### twelve"])
def test_gold_answer_rejects_malformed(field):
    with pytest.raises(ValueError):
        gold_answer(field)


def test_every_upstream_gold_parses():
    rows = read_jsonl(DATA_DIR / "train.jsonl") + read_jsonl(DATA_DIR / "test.jsonl")
    assert len(rows) == 8792
    golds = [gold_answer(r["answer"]) for r in rows]
    assert all(g != INVALID and "," not in g for g in golds)
    # the worked solution itself, read as a completion, is graded correct
    assert all(is_correct(r["answer"], r["answer"]) for r in rows)


def test_is_correct():
    assert is_correct("so the answer is 2125", "#### 2,125")
    assert not is_correct("The answer is 2124.", "#### 2,125")


@pytest.mark.parametrize("completion, boxed, answer", [
    ("So she pays 3 * 6 = 18.\n\nThe final answer is \\boxed{18}.", "18", "18"),
    ("\\boxed{\\$1,200}", "1200", "1200"),
    ("$$\\boxed{18 \\text{ eggs}}$$", "18", "18"),
    ("\\boxed{\\frac{3}{4}}", "0.75", "0.75"),
    ("First \\boxed{5}, then corrected: \\boxed{6}", "6", "6"),  # the last box
    ("The answer is 5. So \\boxed{6}", "6", "5"),  # the exemplars' form first: committed records keep their answer
    ("\\boxed{12", INVALID, "12"),  # cut off inside the box: the last number
    ("no box here: 7", INVALID, "7"),
])
def test_boxed_filter_reads_the_last_box(completion, boxed, answer):
    assert FILTERS["boxed"](completion) == boxed
    assert extract_answer(completion) == answer


def test_every_committed_completion_keeps_its_graded_answer():
    """Adding a filter must not regrade the study: every committed text completion gets the answer its record has."""
    from gsmswarm.config import REPO_DIR
    from gsmswarm.results import read_records

    checked = 0
    for path in sorted((REPO_DIR / "method_results").glob("*/*.jsonl")):
        if path.parent.name == "pal":  # PAL's answer is its program's value, not read from text
            continue
        for record in read_records(path):
            if record.get("error"):
                continue
            graded = record["preds"].get("answer") or [record["pred"]]  # early records: one completion, its pred
            if path.parent.name == "agent":  # the agent's answer is its finish action's argument, not its last number
                finish = [s["argument"] for s in record["trace"] if s["action"] == "finish"]
                assert ([FILTERS["flexible"](a) for a in finish] or [INVALID]) == graded, (path, record["idx"])
            else:
                assert [extract_answer(c) for c in record["completions"]] == graded, (path, record["idx"])
            checked += len(record["completions"])
    assert checked > 30_000
