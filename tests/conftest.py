"""Shared fixtures (the embedded model, one real loopback Petals swarm for the whole session, a sandbox), the
CLI helper, and the test lanes: a test that uses the swarm is `swarm`; one that uses a model, the swarm or is
marked `slow` is `slow`; every other test is `unit`, the fast lane (`bash tests/run.sh --fast`)."""
import os

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  TOKENIZERS_PARALLELISM="false")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

RUN = "cot__petals__smollm2-135m__cot_8shot__test__n1__t0__s0"  # what `run` names its default run
SWARM_FIXTURES = {"swarm", "petals_backend"}
MODEL_FIXTURES = {"model_path", "local_backend"} | SWARM_FIXTURES  # what takes seconds to minutes to set up


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(item.fixturenames)  # requested fixtures and everything they request
        if used & SWARM_FIXTURES:
            item.add_marker(pytest.mark.swarm)
        if used & MODEL_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.unit)


def sandbox_processes() -> list:
    """Pids of processes running as uid 65534, the program sandbox's user."""
    def owner(pid):
        try:
            return os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            return None

    return sorted(p for p in os.listdir("/proc") if p.isdigit() and owner(p) == 65534)


def cli(*args, timeout=300, env=None):
    """`python -m gsmswarm ARGS` as a user runs it (no INITIAL_PEERS from this shell), output captured."""
    return subprocess.run([sys.executable, "-m", "gsmswarm", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "INITIAL_PEERS": "", **(env or {})})


@pytest.fixture(scope="session")
def model_path() -> str:
    from gsmswarm.convert import ensure_model

    return str(ensure_model())


@pytest.fixture(scope="session")
def swarm(model_path, tmp_path_factory):
    """DHT + 2 servers (blocks 0:15 and 15:30) on 127.0.0.1."""
    from gsmswarm.swarm import LoopbackSwarm

    with LoopbackSwarm(model_path, tmp_path_factory.mktemp("swarm"), num_servers=2) as s:
        yield s


@pytest.fixture(scope="session")
def local_backend(model_path):
    from gsmswarm.backends import load_backend

    backend = load_backend("local", model_path)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def petals_backend(model_path, swarm):
    from gsmswarm.backends import load_backend

    backend = load_backend("petals", model_path, swarm.initial_peers, swarm.dht_prefix)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def sandbox():
    """One isolated sandbox worker for the tests that run programs (PAL, the calculator)."""
    from gsmswarm.sandbox import Sandbox

    with Sandbox() as box:
        yield box
