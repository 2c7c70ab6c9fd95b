"""Shared fixtures: the embedded model, and one real loopback Petals swarm for the whole session."""
import os

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  TOKENIZERS_PARALLELISM="false")

import pytest  # noqa: E402


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
