"""Faults in a real loopback swarm of its own (the session's swarm stays whole for the other tests)."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

from gsmswarm.results import read_records
from gsmswarm.swarm import LoopbackSwarm

from conftest import RUN

# A client notices a server killed mid-step only when the reply is late (gsmswarm.backends.petals): every step
# here (the embedded model, at most 4 rows of an 8-shot prompt) takes seconds, so 30 s instead of the default
# 60 s halves each failover's wait and still leaves a slow CI machine room.
FAULT_ENV = {**os.environ, "INITIAL_PEERS": "", "GSMSWARM_REQUEST_TIMEOUT": "30"}


def _server_logs(swarm):
    for proc in swarm.procs:
        if proc.name.startswith("server"):
            yield proc, (swarm.workdir / f"{proc.name}.log").read_text(errors="replace")


def _peer_ids(swarm):
    """Server process by the peer id its log announces."""
    return {re.search(r"Running a server on \[.*?/p2p/(\w+)", text).group(1): proc
            for proc, text in _server_logs(swarm)}


def _serving(swarm):
    """The server that opened the newest inference session still open (its last log line about sessions is
    an open); log lines start with a sortable time of day."""
    candidates = []
    for proc, text in _server_logs(swarm):
        lines = [line for line in text.splitlines() if "rpc_inference.open" in line or "rpc_inference.close" in line]
        if lines and "rpc_inference.open" in lines[-1]:
            candidates.append((lines[-1][:22], proc))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _kill_group(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _cli(*args):
    return [sys.executable, "-m", "gsmswarm", *args]


def _wait_for_records(path, n, proc, deadline_s):
    deadline = time.monotonic() + deadline_s
    while len(read_records(path)) < n:
        assert proc.poll() is None, f"the run exited with code {proc.returncode}"
        assert time.monotonic() < deadline, f"no {n} records in {deadline_s} s"
        time.sleep(0.5)


def test_losing_every_holder_of_a_block_records_backend_errors_stops_and_retries_them(model_path, tmp_path):
    """The last holder of blocks 15:30 dies mid-run: the problems that fail are recorded as backend errors,
    three in a row stop the run in bounded time with one line; once a server holds the blocks again,
    `--retry-errors` solves them and finishes the run."""
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    args = ["run", "--backend", "petals", "--limit", "6", "--max-new-tokens", "48", "--output-dir", str(out)]
    env = FAULT_ENV
    with LoopbackSwarm(model_path, tmp_path / "swarm", num_servers=2) as swarm:
        proc = subprocess.Popen(_cli(*args, "--initial-peers", *swarm.initial_peers),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_for_records(path, 1, proc, 300)
            last_server = next(p for p in swarm.procs if p.name == "server1")  # the only holder of 15:30
            os.killpg(last_server.pid, signal.SIGKILL)
            last_server.wait()
            killed = time.monotonic()
            _, stderr = proc.communicate(timeout=400)
        finally:
            proc.kill()
        took = time.monotonic() - killed
        assert proc.returncode == 2, stderr[-2000:]
        assert took < 600  # 3 problems x 4 tries, each bounded by the request and route timeouts
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: problem ") and "--retry-errors" in last, stderr[-2000:]
        assert "Traceback" not in stderr
        records = read_records(path)
        errors = [r for r in records if r["error"]]
        in_finish_order = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) < 6 and len(errors) == 3
        assert sorted(in_finish_order[-3:], key=lambda r: r["idx"]) == errors  # the 3 written after the kill
        assert all(r["error"].startswith("backend_error: ") and "completions" not in r for r in errors)
        print(f"run stopped {took:.0f} s after the last holder of blocks 15:30 died: {last}")

        start = time.monotonic()
        swarm.restart_server("server1")
        print(f"the restarted server announced blocks 15:30 after {time.monotonic() - start:.0f} s")
        start = time.monotonic()
        retried = subprocess.run(_cli(*args, "--retry-errors", "--initial-peers", *swarm.initial_peers),
                                 capture_output=True, text=True, env=env, timeout=600)
    assert retried.returncode == 0, retried.stderr[-2000:]
    records = read_records(path)
    assert [r["idx"] for r in records] == list(range(6)) and not any(r["error"] for r in records)
    assert len(path.read_text().splitlines()) == 6 + 3  # the error records stay in the file, superseded
    summary = json.loads(path.with_name(RUN + ".summary.json").read_text())
    assert summary["metrics"]["answer"]["n"] == 6 and summary["n_backend_errors"] == 0
    print(f"after a server took blocks 15:30 again, --retry-errors finished the run in "
          f"{time.monotonic() - start:.0f} s")


def test_generation_fails_over_to_a_replica_with_the_same_tokens(model_path, local_backend, tmp_path, monkeypatch):
    """Two servers hold every block; the one serving the session dies mid-generation. Without the failover
    fix (petals_patches) the retry on the replica fails with "Broken input cache" and the run gives up."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from gsmswarm.backends import load_backend

    monkeypatch.setenv("GSMSWARM_REQUEST_TIMEOUT", FAULT_ENV["GSMSWARM_REQUEST_TIMEOUT"])
    ids = local_backend.tokenizer("Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA:",
                                  return_tensors="pt").input_ids
    greedy = dict(max_new_tokens=20, do_sample=False, pad_token_id=local_backend.tokenizer.eos_token_id)
    with torch.inference_mode():
        expected = local_backend.model.generate(ids, **greedy)
    with LoopbackSwarm(model_path, tmp_path / "swarm", block_ranges=["0:30", "0:30"]) as swarm:
        servers = _peer_ids(swarm)
        backend = load_backend("petals", model_path, swarm.initial_peers, swarm.dht_prefix)
        killed = []

        class KillTheServingServer(LogitsProcessor):
            def __call__(self, input_ids, scores):
                if input_ids.shape[1] == ids.shape[1] + 6 and not killed:
                    session = backend.model.transformer.h.active_session
                    peer = session._server_sessions[0].span.peer_id.to_base58()
                    os.killpg(servers[peer].pid, signal.SIGKILL)
                    killed.append(peer)
                return scores

        try:
            with torch.inference_mode():
                out = backend.model.generate(ids, **greedy, logits_processor=LogitsProcessorList([KillTheServingServer()]))
        finally:
            backend.close()
    assert killed
    assert out.tolist() == expected.tolist()


def test_client_sigkill_and_server_death_lose_no_record(model_path, tmp_path):
    """A CoT run is SIGKILLed after its first record, resumed, and loses the server serving it mid-problem:
    the run completes with every record once, equal to an uninterrupted run on the local model (greedy)."""
    out, ref = tmp_path / "results", tmp_path / "reference"
    args = ["run", "--limit", "4", "--max-new-tokens", "48", "--batch-size", "1"]  # one problem at a time
    path = out / "cot" / f"{RUN}.jsonl"
    env = FAULT_ENV
    with LoopbackSwarm(model_path, tmp_path / "swarm", block_ranges=["0:30", "0:30"]) as swarm:
        peers = ["--initial-peers", *swarm.initial_peers]
        # Output to files, not pipes: a SIGKILLed client's orphaned DHT process would hold a pipe open.
        with open(tmp_path / "first.err", "w") as err:
            client = subprocess.Popen(_cli(*args, "--output-dir", str(out), *peers), stdout=subprocess.DEVNULL,
                                      stderr=err, env=env, start_new_session=True)
            try:
                _wait_for_records(path, 1, client, 300)
            finally:
                _kill_group(client)  # the client, its DHT process and its p2pd
        with open(tmp_path / "resumed.err", "w") as err:
            resumed = subprocess.Popen(_cli(*args, "--output-dir", str(out), *peers), stdout=subprocess.DEVNULL,
                                       stderr=err, env=env, start_new_session=True)
            try:
                _wait_for_records(path, len(read_records(path)) + 1, resumed, 300)
                deadline = time.monotonic() + 120
                while (server := _serving(swarm)) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert server is not None, "no server is serving the resumed run"
                os.killpg(server.pid, signal.SIGKILL)
                resumed.wait(timeout=500)
            finally:
                _kill_group(resumed)
    stderr = (tmp_path / "resumed.err").read_text()
    assert resumed.returncode == 0, stderr[-2000:]
    assert "resuming" in stderr
    reference = subprocess.run(_cli(*args, "--backend", "local", "--output-dir", str(ref)), capture_output=True,
                               text=True, env=env, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    got = {r["idx"]: r["completions"] for r in read_records(path)}
    want = {r["idx"]: r["completions"] for r in read_records(ref / "cot" / f"{RUN.replace('petals', 'local')}.jsonl")}
    assert len(read_records(path)) == len(got) == 4
    assert got == want


def test_self_consistency_run_survives_the_death_of_its_serving_replica(model_path, tmp_path):
    """A sampled run (k=4 paths per problem as one batch through the swarm) loses the replica serving it
    mid-problem: the batch continues on the other replica and every record is there once with all k paths.
    One problem in flight at a time (--batch-size 1), so that the server of the newest open session is the
    one serving the run, and problems remain after the first record."""
    out = tmp_path / "results"
    path = out / "self_consistency" / "self_consistency__petals__smollm2-135m__cot_8shot__test__n4__t0.7__s0.jsonl"
    with LoopbackSwarm(model_path, tmp_path / "swarm", block_ranges=["0:30", "0:30"]) as swarm:
        with open(tmp_path / "run.err", "w") as err:
            proc = subprocess.Popen(
                _cli("run", "--method", "self_consistency", "--samples", "4", "--temperature", "0.7", "--limit", "3",
                     "--max-new-tokens", "48", "--batch-size", "1", "--output-dir", str(out),
                     "--initial-peers", *swarm.initial_peers),
                stdout=subprocess.DEVNULL, stderr=err, env=FAULT_ENV,
                start_new_session=True)
            try:
                _wait_for_records(path, 1, proc, 300)
                deadline = time.monotonic() + 120
                while (server := _serving(swarm)) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert server is not None, "no server is serving the run"
                os.killpg(server.pid, signal.SIGKILL)
                killed = time.monotonic()
                assert len(read_records(path)) < 3, "the run finished before the kill"
                proc.wait(timeout=500)
            finally:
                _kill_group(proc)
    stderr = (tmp_path / "run.err").read_text()
    assert proc.returncode == 0, stderr[-2000:]
    records = read_records(path)
    assert [r["idx"] for r in records] == [0, 1, 2] and len(path.read_text().splitlines()) == 3
    assert all(not r["error"] and len(r["completions"]) == 4 for r in records)
    assert "Caught exception when running inference" in stderr  # Petals' retry: the kill hit a generation
    print(f"self-consistency run finished {time.monotonic() - killed:.0f} s after its serving replica died")
