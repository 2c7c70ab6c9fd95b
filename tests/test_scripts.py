"""server_run.sh --local starts a usable loopback swarm; client_run.sh passes flags through."""
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli

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
               "--num-blocks", "16", "--quant-type", "nf4", "--attn-cache-tokens", "16384", "--dry-run")
    assert first.returncode == 0, first.stderr
    assert ("-m gsmswarm.swarm dht --peers-file .cache/swarm/initial_peers.txt --identity-path .cache/swarm/dht.id "
            "--host 0.0.0.0 --port 31336 --public-ip 192.0.2.1 &") in first.stderr
    assert ("-m gsmswarm.swarm server org/Llama-7b --num-blocks 16 --initial-peers /ip4/192.0.2.1/tcp/31336/p2p/"
            in first.stderr)
    assert "--dht-prefix Llama-7b --torch-dtype float16 --quant-type nf4 --device cuda" in first.stderr
    assert first.stderr.rstrip().endswith("--public-ip 192.0.2.1 --attn-cache-tokens 16384")
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


def _walkthrough() -> list:
    """The commands of the README's 'Run it on rented GPUs' block, one per line, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Run it on rented GPUs"):]
    block = section[section.index("```bash\n") + 8:section.index("\n```", section.index("```bash\n"))]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_gpu_walkthrough_in_the_readme_dry_runs_and_parses():
    """Every command of the walkthrough, as far as a machine without GPUs can check it: the scripts' dry runs,
    the CLI's parser and configs (study builds every arm's run with --list), papermill's parameters."""
    import shlex

    import papermill

    from gsmswarm.cli import build_parser
    from gsmswarm.convert import CONVERTER_VERSION
    from gsmswarm.swarm import dht_prefix_for

    env, seen = {}, set()
    for line in _walkthrough():
        for command in line.split(" && "):
            words = shlex.split(command)
            if words[0] == "export":
                env.update(w.split("=", 1) for w in words[1:])
                continue
            while "=" in words[0]:  # VAR=value before the command
                name, value = words.pop(0).split("=", 1)
                env[name] = value
            if words[:2] == ["bash", "install.sh"]:
                assert words[2:] == ["--model", "qwen2.5-coder-0.5b"]  # what the quick start and CI install run
            elif words[0] == "bash":
                done = sh(words[1], "--dry-run", *words[2:], env=env)
                assert done.returncode == 0, f"{command}: {done.stderr}"
                if words[1] == "server_run.sh":
                    model = words[words.index("--model") + 1]
                    assert model == f".cache/models/qwen2.5-coder-0.5b-v{CONVERTER_VERSION}"  # install.sh's folder
                    assert f"--dht-prefix {dht_prefix_for(model)} --torch-dtype float32" in done.stderr
            elif words[0] == ".venv/bin/python":
                assert words[1:3] == ["-m", "gsmswarm"], command
                args = build_parser().parse_args(words[3:])  # exits (fails the test) on an unknown flag
                if args.command == "study":
                    done = cli(*words[3:], "--list", env={"INITIAL_PEERS": env["INITIAL_PEERS"]})
                    assert done.returncode == 0 and "__petals__" in done.stdout, f"{command}: {done.stderr}"
            elif words[0] == ".venv/bin/papermill":
                params = papermill.inspect_notebook(str(REPO / words[1]))
                given = [words[i + 1] for i, w in enumerate(words) if w == "-p"]
                assert set(given) <= set(params), f"{words[1]} has no parameter {set(given) - set(params)}"
            else:
                raise AssertionError(f"the walkthrough has a command this test does not check: {command}")
            seen.add(words[1] if words[0] == "bash" else words[3] if words[0].endswith("python") else words[0])
    assert {"server_run.sh", "client_run.sh", "parity", "study", "train-prompt", "summarize"} <= seen
