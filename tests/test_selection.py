"""The chat regime's dev selection: candidates are ordinary runs found by name, the rule picks per method, and the
table lands in the doc that shows it."""
from gsmswarm.results import run_name
from gsmswarm.selection import CANDIDATES, candidate_config, candidate_summaries, choose, selection_rows

from conftest import cli


def _summary(c, correct, tokens, n=200):
    metric = {"n": n, "correct": correct, "accuracy": correct / n, "ci_low": 0.0, "ci_high": 1.0, "invalid_rate": 0.0}
    return {"run_id": run_name(*candidate_config(c, model="m")), "n_completion_tokens": tokens * n,
            "metrics": {"answer": metric, "strict": metric}, "truncated_rate": 0.0, "commits": ["abcdef0123"]}


def test_candidates_are_dev_runs_in_bfloat16_and_never_read_the_test_set():
    for c in CANDIDATES:
        config, gen = candidate_config(c, model="m")
        assert config.split == "dev" and config.dtype == "bfloat16" and config.limit == 200 and gen.temperature == 0
    assert len({run_name(*candidate_config(c)) for c in CANDIDATES}) == len(CANDIDATES)  # no two share a run


def test_the_rule_takes_the_best_and_within_one_problem_the_shorter():
    zero, system, few = CANDIDATES[1], CANDIDATES[2], CANDIDATES[3]
    runs = [_summary(zero, 60, 300), _summary(system, 61, 320), _summary(few, 40, 80)]
    found = candidate_summaries(runs + [{"run_id": "someone else's run"}], model="m")
    assert set(found) == {zero.label, system.label, few.label}
    assert choose(found) == {"prompt only": zero.label}  # 0.300 is within 0.005 of 0.305 and shorter
    found[zero.label] = _summary(zero, 58, 300)
    assert choose(found) == {"prompt only": system.label}
    rows = selection_rows(found)
    assert [r[1] for r in rows[1:]] == [zero.label, system.label, few.label] and rows[2][-2] == "**yes**"
    found[few.label] = _summary(few, 10, 80, n=14)  # 0.714 on the 14 problems a partial run finished
    assert choose(found) == {"prompt only": system.label}


def test_select_writes_its_table_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- selection: generated from method_results/dev/ by `python -m gsmswarm select "
                   "--markdown docs/chat_regime.md` -->\nold\n<!-- selection end -->\nafter\n")
    done = cli("select", "--model", "no-such-model", "--markdown", str(doc), timeout=60)
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert "old" not in text and f"**no-such-model**, 0 of {len(CANDIDATES)} candidates run" in text
    assert "**qwen2.5-coder-0.5b**, " in text  # every model with candidates run keeps its table
    assert text.startswith("before\n") and text.endswith("after\n")
    missing = cli("select", "--markdown", str(tmp_path / "nope.md"), timeout=60)
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope.md: no such file")


def test_a_prompt_tuning_candidate_evaluates_the_soft_prompt_its_training_makes():
    from gsmswarm.config import TuningConfig
    from gsmswarm.tuning import folder_name

    for c in (c for c in CANDIDATES if c.train):
        config, _ = candidate_config(c, model="qwen2.5-coder-0.5b")
        training = TuningConfig(model="qwen2.5-coder-0.5b", **c.train)
        assert config.soft_prompt.endswith(folder_name(training)) and training.prompt == config.prompt
        assert folder_name(training).endswith("__chat_zeroshot_system")  # apart from the plain frame's prompts
