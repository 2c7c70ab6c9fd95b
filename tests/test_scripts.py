"""server_run.sh --local starts a usable loopback swarm; client_run.sh passes flags through."""
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def sh(*args, env=None):
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_dry_runs_print_the_commands():
    server = sh("server_run.sh", "--local", "--num-servers", "3", "--dry-run")
    assert server.returncode == 0
    assert "-m gsmswarm.swarm local --model smollm2-135m --num-servers 3" in server.stderr
    client = sh("client_run.sh", "--dry-run", "--method", "cot", "--limit", "5",
                env={"INITIAL_PEERS": "/ip4/127.0.0.1/tcp/1/p2p/X", "MODEL_NAME": "m"})
    assert client.returncode == 0
    assert 'INITIAL_PEERS="/ip4/127.0.0.1/tcp/1/p2p/X"' in client.stderr
    assert "-m gsmswarm run --backend petals --model m --method cot --limit 5" in client.stderr


def test_scripts_refuse_unknown_flags_and_the_public_swarm_by_default():
    assert sh("server_run.sh", "--bogus").returncode == 2
    assert "--model is required" in sh("server_run.sh").stderr
    no_peers = sh("server_run.sh", "--model", "m", "--public-ip", "192.0.2.1", "--dry-run", env={"INITIAL_PEERS": ""})
    assert no_peers.returncode == 2 and "--public is the only way to the public swarm" in no_peers.stderr
    no_ip = sh("server_run.sh", "--model", "m", "--new-swarm", "--dry-run")
    assert no_ip.returncode == 2 and "--public-ip is required" in no_ip.stderr
    assert sh("client_run.sh", "--setup", "gpu").returncode == 2


def test_gpu_node_dry_runs_print_a_private_swarm():
    first = sh("server_run.sh", "--model", "org/Llama-7b", "--new-swarm", "--public-ip", "192.0.2.1",
               "--num-blocks", "16", "--quant-type", "nf4", "--dry-run")
    assert first.returncode == 0, first.stderr
    assert ("-m gsmswarm.swarm dht --peers-file .cache/swarm/initial_peers.txt --identity-path .cache/swarm/dht.id "
            "--host 0.0.0.0 --port 31336 --public-ip 192.0.2.1 &") in first.stderr
    assert ("-m gsmswarm.swarm server org/Llama-7b --num-blocks 16 --initial-peers /ip4/192.0.2.1/tcp/31336/p2p/"
            in first.stderr)
    assert "--dht-prefix Llama-7b --torch-dtype float16 --quant-type nf4 --device cuda" in first.stderr
    assert first.stdout.startswith('export INITIAL_PEERS="/ip4/192.0.2.1/tcp/31336/p2p/')
    peers = "/ip4/192.0.2.1/tcp/31336/p2p/QmX"
    second = sh("server_run.sh", "--model", "org/Llama-7b", "--public-ip", "192.0.2.2", "--block-indices", "0:16",
                "--docker", "--dry-run", env={"INITIAL_PEERS": peers})
    assert second.returncode == 0, second.stderr
    assert "docker run --rm --gpus all --ipc host -p 31337:31337" in second.stderr
    assert (f"learningathome/petals:main python -m gsmswarm.swarm server org/Llama-7b --block-indices 0:16 "
            f"--initial-peers {peers}") in second.stderr
    public = sh("server_run.sh", "--public", "--model", "org/Llama-7b", "--dry-run")
    assert public.returncode == 0 and "-m petals.cli.run_server org/Llama-7b" in public.stderr
    setup = sh("client_run.sh", "--dry-run", "--setup", "cuda")
    assert setup.returncode == 0 and "+ bash install.sh" in setup.stderr and "torch==2.13.0 --index-url" in setup.stderr


def _in_session(sid: int) -> list:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


@pytest.mark.swarm
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_run_local_serves_and_a_signal_to_its_pid_stops_everything(sig):
    """What a notebook's subprocess, a script or a service manager does: signal the script's own PID (not
    its process group); the DHT, both servers and their p2pd daemons must all be gone."""
    proc = subprocess.Popen(["bash", "server_run.sh", "--local"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, lines = time.monotonic() + 240, []
        while not any(line.startswith("export INITIAL_PEERS=") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stdout.readline())
        peers = next(line for line in lines if line.startswith("export")).split('"')[1].split()
        assert peers and all(p.startswith("/ip4/127.0.0.1/tcp/") for p in peers)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while (left := _in_session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, left
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_prompt_tuning_scripts_wrap_the_cli():
    train = sh("prompt_tuning/train.sh", "--dry-run", "--steps", "5")
    assert train.returncode == 0 and "-m gsmswarm train-prompt --steps 5" in train.stderr
    gen = sh("prompt_tuning/generate.sh", "--dry-run", "prompt_tuning/x", "--limit", "2")
    assert gen.returncode == 0
    assert f"-m gsmswarm run --backend petals --model smollm2-135m --method cot --soft-prompt {REPO}/prompt_tuning/x --limit 2" in gen.stderr
    prep = sh("prompt_tuning/model_tuning_preprocessing.sh", "--dry-run")
    assert prep.returncode == 0 and "+ bash install.sh" in prep.stderr
    assert sh("prompt_tuning/model_tuning_preprocessing.sh", "--bogus").returncode == 2
