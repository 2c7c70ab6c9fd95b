"""Faults in a real loopback swarm of its own (the session's swarm stays whole for the other tests)."""
import os
import signal
import subprocess
import sys
import time

from gsmswarm.results import read_records
from gsmswarm.swarm import LoopbackSwarm

RUN = "cot__petals__smollm2-135m__cot_8shot__test__n1__t0__s0"


def _wait_for_records(path, n, proc, deadline_s):
    deadline = time.monotonic() + deadline_s
    while len(read_records(path)) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"no {n} records in {deadline_s} s"
        time.sleep(0.5)


def test_losing_every_holder_of_a_block_stops_the_run_in_bounded_time_and_keeps_records(model_path, tmp_path):
    out = tmp_path / "results"
    path = out / "cot" / f"{RUN}.jsonl"
    with LoopbackSwarm(model_path, tmp_path / "swarm", num_servers=2) as swarm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gsmswarm", "run", "--backend", "petals", "--limit", "6", "--max-new-tokens",
             "48", "--output-dir", str(out), "--initial-peers", *swarm.initial_peers],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "INITIAL_PEERS": ""})
        try:
            _wait_for_records(path, 1, proc, 300)
            last_server = next(p for p in swarm.procs if p.name == "server1")  # the only holder of 15:30
            os.killpg(last_server.pid, signal.SIGKILL)
            killed = time.monotonic()
            _, stderr = proc.communicate(timeout=400)
        finally:
            proc.kill()
        took = time.monotonic() - killed
    assert proc.returncode == 2, stderr[-2000:]
    assert took < 300  # 4 tries, each bounded by the request and route timeouts (60 s); measured: 6 s
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: problem ") and "rerun the same command" in last, stderr[-2000:]
    assert "Traceback" not in stderr
    records = read_records(path)
    assert 1 <= len(records) < 6 and len({r["idx"] for r in records}) == len(records)
    print(f"run stopped {took:.0f} s after the last holder of blocks 15:30 died: {last}")
