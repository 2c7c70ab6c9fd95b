import pytest

from gsmswarm.answers import INVALID
from gsmswarm.metrics import (accuracy, first_difference, holm, maj_at_k, maj_curve, majority_vote, mcnemar_exact,
                              paired, paired_bootstrap, wilson_interval)


@pytest.mark.parametrize("preds, expected", [
    (["3", "5", "5"], "5"),
    (["3", "5", "5", "3"], "3"),  # tie: the pred seen first wins
    (["5", "3", "3", "5"], "5"),
    ([INVALID, INVALID, "7"], "7"),  # an invalid never wins while a valid pred exists
    ([INVALID, INVALID, "7", "8"], "7"),
    ([INVALID, INVALID], INVALID),
    ([], INVALID),
])
def test_majority_vote(preds, expected):
    assert majority_vote(preds) == expected


def _rec(idx, gold, answers):
    return {"idx": idx, "gold": gold, "completions": [f"The answer is {a}." for a in answers],
            "preds": {"answer": answers, "strict": answers, "flexible": answers},
            "pred": majority_vote(answers), "correct": majority_vote(answers) == gold}


def test_maj_at_k_takes_prefixes():
    records = [_rec(0, "1", ["2", "1", "1", "3"]),  # maj@1 wrong, maj@2 tie -> "2" wrong, maj@3 and @4 right
               _rec(1, "5", ["5", INVALID, "6", "6"])]  # maj@1..3 right ("5" first in tie at k=3), maj@4 wrong
    assert [m["correct"] for m in maj_curve(records)] == [1, 1, 2, 1]
    assert maj_at_k(records, 3)["accuracy"] == 1.0
    with pytest.raises(ValueError):
        maj_at_k(records, 5)


def test_wilson_matches_hand_computed_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 150)[0] == 0.0 and wilson_interval(150, 150)[1] == 1.0  # never past the accuracy


@pytest.mark.parametrize("only_a, only_b, p", [(1, 8, 0.0390625), (0, 6, 0.03125), (5, 5, 1.0), (0, 0, 1.0),
                                               (2, 10, 0.0385742)])
def test_mcnemar_exact(only_a, only_b, p):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p, abs=1e-6)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(p, abs=1e-6)


def test_paired_counts_on_common_problems():
    a = [_rec(i, "1", ["1" if i < 6 else "0"]) for i in range(10)]
    b = [_rec(i, "1", ["1" if i % 2 else "0"]) for i in range(12)]
    out = paired(a, b)
    assert (out["n"], out["both_right"], out["only_a"], out["only_b"], out["both_wrong"]) == (10, 3, 3, 2, 2)


def test_accuracy_per_filter():
    records = [_rec(0, "1", ["1"]), _rec(1, "2", [INVALID])]
    m = accuracy(records)
    assert (m["n"], m["correct"], m["invalid_rate"]) == (2, 1, 0.5)


def test_holm_matches_hand_computed_adjustment():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1); step-down keeps them monotone
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_paired_bootstrap_interval():
    same = [True, False] * 50
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)  # identical runs: no difference, no spread
    a = [True] * 30 + [False] * 70
    b = [True] * 20 + [False] * 80  # a solves 10 more, never fewer: every resample has a >= b
    diff, lo, hi = paired_bootstrap(a, b, seed=1)
    assert diff == pytest.approx(0.10) and 0.0 < lo < diff < hi < 0.2
    assert paired_bootstrap(a, b, seed=1) == (diff, lo, hi)  # seeded: the same interval every time
    # the normal approximation: the per-problem difference is 1 on 10 of 100 problems, sd = sqrt(0.1 * 0.9 / 100)
    assert hi - lo == pytest.approx(2 * 1.96 * (0.1 * 0.9 / 100) ** 0.5, rel=0.25)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10])


def test_paired_reports_the_difference_a_minus_b():
    a = [_rec(i, "1", ["1" if i < 6 else "0"]) for i in range(10)]
    b = [_rec(i, "1", ["1" if i < 2 else "0"]) for i in range(10)]
    out = paired(a, b)
    assert out["diff"] == pytest.approx(0.4) and out["diff_ci_low"] > 0 and out["diff_ci_high"] <= 0.8


def test_first_difference_is_where_two_sequences_part():
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2  # a prefix: where the shorter one ends
    assert first_difference("abc", "abc") == 3
