import hashlib
import os
import subprocess
import sys

import pytest

from gsmswarm.config import UserError
from gsmswarm.data import DATA_DIR, DEV_SIZE, load_split, read_jsonl

UPSTREAM_SHA256 = {  # the files ship byte-identical to ../shared/gsm8k (openai/grade-school-math)
    "train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_data_files_are_upstream(name):
    assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == UPSTREAM_SHA256[name]


def test_split_sizes_and_limit():
    assert len(load_split("train")) == 7473
    assert len(load_split("test")) == 1319
    assert len(load_split("dev")) == DEV_SIZE
    assert [p.idx for p in load_split("test", limit=3)] == [0, 1, 2]


def test_dev_is_deterministic_and_from_train():
    dev = load_split("dev")
    assert [p.idx for p in dev] == [p.idx for p in load_split("dev")]
    # the same problems in another process with another hash seed: nothing depends on set or dict order
    other = subprocess.run([sys.executable, "-c", "from gsmswarm.data import load_split; "
                            "print(' '.join(str(p.idx) for p in load_split('dev')))"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True).stdout.split()
    assert other == [str(p.idx) for p in dev]
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
