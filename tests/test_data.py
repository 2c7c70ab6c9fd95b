import hashlib
import os
import socket
import subprocess
import sys

import pytest

from gsmswarm import data
from gsmswarm.config import UserError
from gsmswarm.data import DATA_DIR, DEV_SIZE, load_split, read_jsonl

UPSTREAM_SHA256 = {  # the files ship byte-identical to ../shared/gsm8k (openai/grade-school-math)
    "train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_data_files_are_upstream(name):
    assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == UPSTREAM_SHA256[name]


# The problem ids of the dev split, as every committed dev run and soft prompt has used them: a change in how the
# data is loaded must not move them.
DEV_IDS_SHA256 = "3e18b7f1b1dd4a7a"


def ids_digest(problems) -> str:
    return hashlib.sha256(" ".join(f"{p.idx}:{p.gold}" for p in problems).encode()).hexdigest()[:16]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the default data and a folder copy must not dial the hub."""
    def refuse(self, address):
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def hub_copy(tmp_path, monkeypatch):
    """A folder laid out as the hub's openai/gsm8k repository (config main, parquet), written from the shipped
    files; `datasets` caches what it prepares in tmp_path. The source goes back to the shipped files after."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "gsm8k"
    (folder / "main").mkdir(parents=True)
    for name in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(read_jsonl(DATA_DIR / f"{name}.jsonl")),
                       folder / "main" / f"{name}-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n"
                                      "  - split: train\n    path: main/train-*\n"
                                      "  - split: test\n    path: main/test-*\n---\n")
    monkeypatch.setattr(data, "DATASETS_CACHE", tmp_path / "cache")
    yield folder
    data.use_source("local")


def test_the_dataset_holds_the_shipped_lines_in_order(no_network):
    data.use_source("local")
    for name in ("train", "test"):
        dataset = data.gsm8k_dataset(name)
        rows = read_jsonl(DATA_DIR / f"{name}.jsonl")
        assert dataset.column_names == ["question", "answer"] and len(dataset) == len(rows)
        assert [(p.idx, p.question, p.answer) for p in load_split(name)] == \
            [(i, r["question"], r["answer"]) for i, r in enumerate(rows)]
    assert ids_digest(load_split("dev")) == DEV_IDS_SHA256


def test_a_copy_of_the_hub_dataset_gives_the_same_problems(hub_copy, no_network):
    shipped = {name: load_split(name) for name in ("train", "test", "dev")}
    data.use_source(str(hub_copy))
    assert {name: load_split(name) for name in shipped} == shipped
    assert ids_digest(load_split("dev")) == DEV_IDS_SHA256


def test_a_copy_that_differs_is_refused_naming_the_row(hub_copy, no_network):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(DATA_DIR / "test.jsonl")
    rows[5], rows[6] = rows[6], rows[5]  # the same problems, another order: ids would point at other problems
    pq.write_table(pa.Table.from_pylist(rows), hub_copy / "main" / "test-00000-of-00001.parquet")
    with pytest.raises(UserError, match=r"--data .*gsm8k: test row 5 differs from .*test\.jsonl:6"):
        data.use_source(str(hub_copy))


def test_the_hub_offline_is_one_line_naming_the_flag(tmp_path, monkeypatch, no_network):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(data, "DATASETS_CACHE", tmp_path)
    try:
        with pytest.raises(UserError, match=r"^--data hub: cannot load openai/gsm8k \(main\) split train: .*\n?$"):
            data.use_source("hub")
    finally:
        data.use_source("local")


def test_split_sizes_and_limit():
    assert len(load_split("train")) == 7473
    assert len(load_split("test")) == 1319
    assert len(load_split("dev")) == DEV_SIZE
    assert [p.idx for p in load_split("test", limit=3)] == [0, 1, 2]


def test_dev_is_deterministic_and_from_train():
    dev = load_split("dev")
    assert [p.idx for p in dev] == [p.idx for p in load_split("dev")]
    # the same problems in another process with another hash seed: nothing depends on set or dict order
    # and without importing datasets, which would cost every run's start seconds for the same rows
    other = subprocess.run([sys.executable, "-c", "import sys; from gsmswarm.data import load_split; "
                            "print(' '.join(str(p.idx) for p in load_split('dev')), 'datasets' in sys.modules)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "12345"},
                           check=True).stdout.split()
    assert other == [str(p.idx) for p in dev] + ["False"]
    train = load_split("train")
    assert all(train[p.idx] == p for p in dev)
    assert len({p.idx for p in dev}) == DEV_SIZE


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_unknown_split():
    with pytest.raises(UserError):
        load_split("validation")
