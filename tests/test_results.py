import json

import pytest

from gsmswarm.config import GenerationConfig, RunConfig, UserError
from gsmswarm.results import ResultsWriter, git_commit, read_records, run_name


def _record(idx):
    return {"idx": idx, "pred": str(idx), "correct": True}


def test_resume_after_torn_write(tmp_path):
    path = tmp_path / "cot" / "run.jsonl"
    with ResultsWriter(path) as w:
        w.write(_record(0))
        w.write(_record(1))
    with open(path, "a") as f:
        f.write('{"idx": 2, "pred": "2", "corr')  # the process died mid-write
    w = ResultsWriter(path)
    assert sorted(w.done) == [0, 1]
    w.write(_record(2))
    w.close()
    assert [r["idx"] for r in read_records(path)] == [0, 1, 2]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(1)))
    with ResultsWriter(path) as w:
        assert sorted(w.done) == [0, 1]
        w.write(_record(2))
    assert [r["idx"] for r in read_records(path)] == [0, 1, 2]


def test_malformed_middle_line_is_an_error_and_file_untouched(tmp_path):
    path = tmp_path / "run.jsonl"
    content = json.dumps(_record(0)) + "\nnot json\n" + json.dumps(_record(2)) + "\n"
    path.write_text(content)
    with pytest.raises(UserError, match=r"run\.jsonl:2: malformed JSON"):
        ResultsWriter(path)
    assert path.read_text() == content


def test_no_duplicate_records(tmp_path):
    with ResultsWriter(tmp_path / "run.jsonl") as w:
        w.write(_record(0))
        with pytest.raises(ValueError):
            w.write(_record(0))


def test_every_committed_record_follows_the_written_schema():
    """method_results/README.md documents these fields; every committed record has them and no others."""
    from gsmswarm.config import REPO_DIR
    from gsmswarm.methods import get_method
    from gsmswarm.results import EARLIER_FIELDS, LATER_FIELDS, RECORD_FIELDS

    failed_fields = {"run_id", "method", "backend", "model", "prompt", "prompt_hash", "gen", "commit", "idx",
                     "question", "gold", "error"}  # what a backend error still records
    readme = (REPO_DIR / "method_results" / "README.md").read_text()
    paths = sorted((REPO_DIR / "method_results").glob("*/*.jsonl"))
    assert len(paths) >= 10
    for path in paths:
        own = getattr(get_method(path.parent.name), "RECORD_FIELDS", {})
        assert all(f"`{name}`" in readme for name in (*RECORD_FIELDS, *LATER_FIELDS, *EARLIER_FIELDS, *own))
        allowed = set(RECORD_FIELDS) | set(LATER_FIELDS) | set(EARLIER_FIELDS) | set(own)
        for r in read_records(path):
            required = failed_fields if r["error"] else set(RECORD_FIELDS) | set(own)
            assert not required - set(r) and not set(r) - allowed, (path.name, r["idx"], required - set(r),
                                                                    set(r) - allowed)


def test_commit_is_dirty_for_changed_code_only(tmp_path):
    """A record's commit says `-dirty` when code differs from it, not when results or prose do."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("run.py", "README.md", "method_results/a.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "README.md").write_text("2\n")
    (tmp_path / "method_results" / "a.jsonl").write_text("2\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "run.py").write_text("2\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_a_process_names_the_commit_it_started_with(monkeypatch):
    """Runs and trainings take the commit once: a study's later arms run the code loaded for its first."""
    from gsmswarm import results

    heads = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(results, "git_commit", lambda: next(heads))
    results.process_commit.cache_clear()
    try:
        assert results.process_commit() == results.process_commit() == "aaaa"
    finally:
        results.process_commit.cache_clear()


def test_run_name_encodes_config():
    name = run_name(RunConfig(), GenerationConfig())
    assert name == "cot__petals__smollm2-135m__cot_8shot__test__n1__t0__s0"
    rag = RunConfig(method="rag", rag_k=4, soft_prompt="prompt_tuning/pt/", backend="local")
    assert run_name(rag, GenerationConfig(temperature=0.7, n=2, seed=3)) == \
        "rag__local__smollm2-135m__rag_cot+pt@k4-nearest_last__test__n2__t0.7__s3"


def test_each_model_is_compared_with_its_own_chain_of_thought_run():
    from gsmswarm.report import baselines

    def summary(run_id, model, method="cot", n=150, samples=1, soft_prompt=None, prompt="cot_8shot"):
        return {"run_id": run_id, "n_samples": samples, "metrics": {"answer": {"n": n}},
                "config": {"method": method, "model": model, "soft_prompt": soft_prompt, "prompt": prompt}}

    runs = [summary("small-cot", "smollm2-135m"), summary("qwen-cot-partial", "qwen2.5-coder-0.5b", n=40),
            summary("qwen-zero-shot-control", "qwen2.5-coder-0.5b", prompt="qa_zeroshot"),
            summary("qwen-cot", "qwen2.5-coder-0.5b", n=150), summary("qwen-pt", "qwen2.5-coder-0.5b", soft_prompt="p"),
            summary("qwen-sc", "qwen2.5-coder-0.5b", method="self_consistency", samples=8),
            summary("small-rag", "smollm2-135m", method="rag")]
    assert {m: b["run_id"] for m, b in baselines(runs).items()} == {"smollm2-135m": "small-cot",
                                                                    "qwen2.5-coder-0.5b": "qwen-cot"}
    runs.append({**summary("qwen-cot-bf16", "qwen2.5-coder-0.5b", n=1319)})
    runs[-1]["config"]["dtype"] = "bfloat16"  # more problems, but another dtype: never the float32 runs' baseline
    assert baselines(runs)["qwen2.5-coder-0.5b"]["run_id"] == "qwen-cot"
    assert {m: b["run_id"] for m, b in baselines(runs, "bfloat16").items()} == {"qwen2.5-coder-0.5b": "qwen-cot-bf16"}


def test_method_comparison_pairs_runs_on_the_problems_all_finished():
    from gsmswarm.report import method_comparison

    def records(correct):
        return [{"idx": i, "correct": c, "pred": "1" if c else "2", "gold": "1"} for i, c in enumerate(correct)]

    per_run, pairs = method_comparison({"a": records([True, True, False, True]), "b": records([False, True, False])})
    assert per_run["n"].tolist() == [3, 3]  # a's fourth problem is left out: b has not reached it
    assert pairs.loc[("a", "b"), ["only_a", "only_b", "both_right"]].tolist() == [1, 0, 1]
    per_run, pairs = method_comparison({"a": records([True, False])})  # a model with one run so far
    assert per_run["n"].tolist() == [2] and pairs.empty
