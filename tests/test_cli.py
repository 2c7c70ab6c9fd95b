"""The CLI end to end through the real loopback swarm, and its answers to bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gsmswarm.cli import parity_line
from gsmswarm.config import GenerationConfig, as_dict, one_line
from gsmswarm.metrics import majority_vote
from gsmswarm.prompts import load_prompt, prompt_hash
from gsmswarm.results import read_records

from conftest import RUN, cli, sandbox_processes


def run_args(swarm, out, limit):
    return ["run", "--method", "cot", "--backend", "petals", "--split", "test", "--limit", str(limit),
            "--max-new-tokens", "32", "--output-dir", str(out), "--initial-peers", *swarm.initial_peers]


def test_run_writes_records_and_summary_then_resumes(swarm, tmp_path):
    out = tmp_path / "results"
    first = cli(*run_args(swarm, out, 2))
    assert first.returncode == 0, first.stderr[-2000:]
    path = out / "cot" / f"{RUN}.jsonl"
    records = read_records(path)
    assert [r["idx"] for r in records] == [0, 1]
    r = records[0]
    assert r["gold"] == "18" and r["backend"] == "petals" and r["model"] == "smollm2-135m"
    assert set(r["preds"]) == {"answer", "strict", "boxed", "flexible"} and len(r["completions"]) == 1
    assert r["n_prompt_tokens"] > 500 and 0 < r["n_completion_tokens"][0] <= 32 and r["latency_s"] > 0
    summary = json.loads((out / "cot" / f"{RUN}.summary.json").read_text())
    assert summary["metrics"]["answer"]["n"] == 2 and summary["config"]["gen"]["max_new_tokens"] == 32
    assert "acc=" in first.stdout and "95% CI" in first.stdout

    again = cli(*run_args(swarm, out, 3))  # one more problem: only problem 2 is generated
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 of 3 problems already done" in again.stderr
    assert [r["idx"] for r in read_records(path)] == [0, 1, 2]
    assert read_records(path)[:2] == records


def test_killed_run_resumes_without_duplicates(swarm, tmp_path):
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    # one request in flight, so that problems finish one after another and the kill lands between records
    # (with several in flight all three may finish within one poll)
    proc = subprocess.Popen([sys.executable, "-m", "gsmswarm", *run_args(swarm, out, 3), "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (path.exists() and path.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "first record never appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its DHT child and p2pd, as a killed terminal job
    proc.wait()
    done_before = len(read_records(path))
    assert 1 <= done_before < 3
    resumed = cli(*run_args(swarm, out, 3))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["idx"] for r in read_records(path)] == [0, 1, 2]


def test_summarize_prints_tables_and_writes_plots(swarm, tmp_path):
    out = tmp_path / "results"
    assert cli(*run_args(swarm, out, 2)).returncode == 0
    assert cli(*run_args(swarm, out, 2)[:-len(swarm.initial_peers) - 1], "--backend", "local").returncode == 0
    table = cli("summarize", "--output-dir", str(out))
    assert table.returncode == 0, table.stderr[-2000:]
    assert RUN in table.stdout and "95% CI" in table.stdout and "McNemar p" in table.stdout
    assert (out / "accuracy.png").stat().st_size > 1000


@pytest.mark.slow
def test_pal_run_records_its_isolation_and_leaves_no_sandbox_process(tmp_path):
    before = sandbox_processes()
    result = cli("run", "--method", "pal", "--backend", "local", "--limit", "2", "--max-new-tokens", "32",
                 "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_records(next(tmp_path.glob("pal/*.jsonl")))
    assert [r["idx"] for r in records] == [0, 1] and {r["isolation"] for r in records} == {"bwrap"}
    assert sandbox_processes() == before


def test_pal_without_isolation_stops_with_one_line_before_any_work(tmp_path):
    """No bubblewrap on PATH: one line naming the fix and the explicit way out, and nothing written."""
    result = cli("run", "--method", "pal", "--backend", "local", "--limit", "1", "--output-dir", str(tmp_path),
                 timeout=120, env={"PATH": str(tmp_path)})
    one_line_error(result, "bubblewrap", "--sandbox unsafe")
    assert not list(tmp_path.glob("*/*.jsonl"))


@pytest.mark.slow
def test_study_runs_its_arms_and_summarize_gives_their_verdicts(tmp_path):
    out = tmp_path / "results"
    study = cli("study", "cot", "ptune", "deep_ptune", "--limit", "2", "--max-new-tokens", "16",
                "--output-dir", str(out))
    assert study.returncode == 0, study.stderr[-2000:]
    assert ("[deep_ptune] skipped: no soft prompt prompt_tuning/deep_ptune__petals__smollm2-135m__v16__s0 yet; train "
            "it with python -m gsmswarm train-prompt --model smollm2-135m --backend petals --tuning-mode deep_ptune"
            in study.stdout)  # not trained for this model: said, not fatal
    assert sorted(p.name for p in out.glob("*/*.jsonl")) == [
        "cot__local__smollm2-135m__cot_8shot__test__n1__t0__s0.jsonl",
        "cot__local__smollm2-135m__qa_zeroshot+ptune__petals__smollm2-135m__v16__s0__test__n1__t0__s0.jsonl"]
    table = cli("summarize", "--output-dir", str(out))
    assert table.returncode == 0, table.stderr[-2000:]
    assert "the study, smollm2-135m" in table.stdout and "PT vs CoT 8-shot  2" in table.stdout
    assert (out / "accuracy.png").stat().st_size > 1000


def one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) <= 2, result.stderr  # at most a "resuming" line
    assert lines[-1].startswith("error: ") and all(n in lines[-1] for n in needles), lines[-1]


@pytest.mark.parametrize("args, needles", [
    (["run", "--method", "tree_search"], ["--method tree_search: no such method", "cot"]),
    (["run", "--backend", "openai"], ["--backend"]),
    (["run", "--no-such-flag", "1"], ["unrecognized arguments", "--no-such-flag"]),
    (["run", "--limit", "many"], ["--limit", "invalid int"]),
    (["run", "--model", "/nonexistent/model"], ["--model", "/nonexistent/model"]),
    (["run", "--prompt", "nope"], ["--prompt nope"]),
    (["run", "--n", "4"], ["--temperature"]),
    (["run", "--samples", "0"], ["--samples"]),
    (["run", "--batch-size", "0"], ["--batch-size"]),
    (["run", "--dtype", "fp8"], ["--dtype", "fp8"]),
    (["run", "--device", "tpu"], ["--device", "tpu"]),
    (["run", "--device", "cuda", "--output-dir", "/nonexistent/out"], ["--device cuda", "no CUDA"]),
    (["parity", "--model", "/nope"], ["--model", "/nope"]),
    (["train-prompt", "--model", "/nope"], ["--model", "/nope"]),
    (["run", "--initial-peers", "localhost:1234"], ["--initial-peers"]),
    (["summarize", "--output-dir", "/nonexistent"], ["--output-dir"]),
    (["study", "cot", "nope"], ["no arm", "'nope'"]),
    (["run", "--method", "pal", "--sandbox", "none"], ["--sandbox", "bwrap or unsafe"]),
    (["study", "--method", "pal"], ["unrecognized arguments", "--method"]),  # the arms set the method
])
def test_bad_input_gives_one_line(args, needles):
    one_line_error(cli(*args, timeout=60), *needles)


@pytest.mark.parametrize("error, line", [
    (RuntimeError("boom\nTraceback (most recent call last):\n  ..."), "RuntimeError: boom"),
    (TimeoutError(), "TimeoutError"),  # no message: the type alone, not an IndexError of ours
    (OSError("  \n"), "OSError"),
    (ValueError("x" * 300), "ValueError: " + "x" * 200 + "..."),
])
def test_an_error_is_named_by_its_type_and_first_line(error, line):
    assert one_line(error) == line


def _existing_record(path, **overrides):
    """A finished record as `run` writes it with default settings."""
    record = {"idx": 0, "commit": "x", "prompt_hash": prompt_hash(load_prompt("cot_8shot")),
              "gen": as_dict(GenerationConfig()), "n_completion_tokens": [1], "latency_s": 1.0,
              "truncated": [False], "correct": False, "pred": "1", "gold": "18", "completions": ["1"],
              "preds": {"answer": ["1"], "strict": ["1"], "flexible": ["1"]}, **overrides}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record) + "\n")
    return path.read_bytes()


def test_unreachable_swarm_is_one_line_and_keeps_results(tmp_path):
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    before = _existing_record(path)
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWFi4kvZGFvBDcsRF5bVbPPtNHnUugSEYV9qACBCuqksZA"
    result = cli("run", "--limit", "2", "--output-dir", str(out), "--initial-peers", dead, timeout=120)
    one_line_error(result, "cannot reach the swarm", dead)
    assert path.read_bytes() == before


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    before = _existing_record(path, prompt_hash="0123456789ab")
    one_line_error(cli("run", "--limit", "2", "--output-dir", str(out), timeout=60), str(path), "prompt_hash")
    assert path.read_bytes() == before


def test_self_consistency_run_holds_k_samples(swarm, tmp_path):
    out = tmp_path / "results"
    result = cli("run", "--method", "self_consistency", "--samples", "4", "--temperature", "0.7", "--limit", "1",
                 "--max-new-tokens", "24", "--output-dir", str(out), "--initial-peers", *swarm.initial_peers)
    assert result.returncode == 0, result.stderr[-2000:]
    [path] = (out / "self_consistency").glob("*__n4__t0.7__s0.jsonl")
    [record] = read_records(path)
    assert len(record["completions"]) == 4 and len(record["preds"]["answer"]) == 4
    assert len(record["truncated"]) == 4 and len(record["n_completion_tokens"]) == 4
    assert record["pred"] == majority_vote(record["preds"]["answer"])
    summary = json.loads(path.with_name(path.stem + ".summary.json").read_text())
    assert [m["k"] for m in summary["maj_curve"]] == [1, 2, 3, 4]


def test_self_consistency_needs_samples():
    one_line_error(cli("run", "--method", "self_consistency", timeout=60), "--samples")


def test_malformed_results_line_is_named_and_kept(tmp_path):
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"idx": 0}\n{broken\n{"idx": 2}\n')
    before = path.read_bytes()
    one_line_error(cli("run", "--limit", "3", "--output-dir", str(out), timeout=60), f"{path}:2")
    assert path.read_bytes() == before


def test_parity_lines_name_where_the_swarm_parts_and_how_close_the_two_best_logits_were_there():
    decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
    asked = []

    def top_two(prefix):
        asked.append(prefix)
        return [12.5, 12.25]

    want = [ord(c) for c in "abcd"]
    assert parity_line(want, list(want), decode, top_two) == "4 tokens, identical"
    assert parity_line(want, want[:2], decode, top_two) == "DIFFER (lengths 2/4, one a prefix of the other)"
    assert asked == []  # no logits where nothing parts inside both
    assert parity_line(want, [ord(c) for c in "abXd"], decode, top_two) == (
        "DIFFER (lengths 4/4, first difference at token 2: local 'c', swarm 'X'; the local model's two best logits "
        "there 12.500 / 12.250, gap 0.250)")
    assert asked == [want[:2]]  # the local model is asked at the shared prefix


def test_parity_subcommand_against_a_running_swarm(swarm):
    result = cli("parity", "--limit", "1", "--max-new-tokens", "8", "--initial-peers", *swarm.initial_peers)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity: 1/1 prompts identical" in result.stdout


@pytest.mark.slow
def test_backend_errors_are_recorded_apart_and_retried_with_a_flag(tmp_path, monkeypatch, capsys):
    """A failed generation (injected into the real local backend) becomes a record with its error that no
    score counts; a plain rerun keeps it, `--retry-errors` solves it again; three in a row stop the run."""
    from gsmswarm import backends
    from gsmswarm.backends.local import LocalBackend
    from gsmswarm.cli import main
    from gsmswarm.data import load_split

    out = tmp_path / "results"
    args = ["run", "--backend", "local", "--max-new-tokens", "8", "--output-dir", str(out)]
    run = RUN.replace("petals", "local")
    path, summary = out / "cot" / f"{run}.jsonl", out / "cot" / f"{run}.summary.json"
    questions = [p.question for p in load_split("test", 8)]
    failing = {questions[1]}
    submit, step, refused = LocalBackend.submit, LocalBackend.step, []

    def failing_submit(self, key, prompt, gen, seed=0):  # a failing request is answered by the next step
        if any(q in prompt for q in failing):
            refused.append(key)
        else:
            submit(self, key, prompt, gen, seed)

    def failing_step(self):
        errors = [(key, backends.BackendError("the swarm failed after 4 tries: injected")) for key in refused]
        refused.clear()
        return errors + step(self)

    monkeypatch.setattr(LocalBackend, "submit", failing_submit)
    monkeypatch.setattr(LocalBackend, "step", failing_step)
    assert main([*args, "--limit", "4"]) == 0
    assert "1 problems are recorded as backend errors" in capsys.readouterr().err
    records = read_records(path)
    assert [r["idx"] for r in records] == [0, 1, 2, 3]
    assert records[1]["error"] == "backend_error: the swarm failed after 4 tries: injected"
    s = json.loads(summary.read_text())
    assert s["metrics"]["answer"]["n"] == 3 and s["n_backend_errors"] == 1 and s["taxonomy"]["backend_error"] == 1

    failing.clear()
    assert main([*args, "--limit", "4"]) == 0  # resuming skips the recorded error
    assert read_records(path)[1]["error"]
    assert main([*args, "--limit", "4", "--retry-errors"]) == 0
    records = read_records(path)
    assert [r["idx"] for r in records] == [0, 1, 2, 3] and not any(r["error"] for r in records)
    assert len(path.read_text().splitlines()) == 5
    s = json.loads(summary.read_text())
    assert s["metrics"]["answer"]["n"] == 4 and s["n_backend_errors"] == 0

    failing.update(questions[4:])
    capsys.readouterr()
    assert main([*args, "--limit", "8"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: problem 6: ") and "3 problems in a row" in last and "--retry-errors" in last
    assert [r["idx"] for r in read_records(path) if r["error"]] == [4, 5, 6]


def test_a_chat_prompt_runs_in_the_models_own_format_and_ends_at_its_turn(tmp_path, model_path):
    out = tmp_path / "results"
    done = cli("run", "--backend", "local", "--prompt", "chat_zeroshot", "--limit", "2", "--max-new-tokens", "24",
               "--output-dir", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [path] = (out / "cot").glob("*.jsonl")
    assert "__chat_zeroshot__" in path.name
    r = read_records(path)[0]
    assert r["gen"]["stop"] == [] and r["gen"]["max_new_tokens"] == 24  # no blank-line stop; the user's limit kept
    assert r["prompt_hash"] == prompt_hash(load_prompt("chat_zeroshot", model_path))  # the template as rendered
    assert set(r["preds"]) == {"answer", "strict", "boxed", "flexible"}
