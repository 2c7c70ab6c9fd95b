"""Index build and reopen time, and per-query latency of Chroma top-k vs exact brute-force cosine (numpy) over
the same stored embeddings, with Chroma's recall@k against the exact neighbours. Goal: recall >= 0.99 and
<= 5 ms per query.

Query embeddings are computed once up front (their time is printed separately), so both searches are timed on
the same vectors. The two searches alternate query by query, so machine noise hits both.

    .venv/bin/python benchmarks/retrieval.py [--index-dir DIR] [--queries 200] [--k 8]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", default=None,
                        help="store to build (if absent) and reopen (default: a fresh temporary folder)")
    parser.add_argument("--queries", type=int, default=200, help="first N test questions")
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import numpy as np
    from chromadb.api.shared_system_client import SharedSystemClient

    from gsmswarm.data import load_split
    from gsmswarm.results import git_commit
    from gsmswarm.retrieval import MARKER, open_index

    store = Path(args.index_dir or tempfile.mkdtemp(prefix="bench-chroma-"))
    existed = (store / MARKER).exists()
    t0 = time.perf_counter()
    index = open_index(store_dir=store)
    build_s = time.perf_counter() - t0
    SharedSystemClient.clear_system_cache()  # a cold reopen, as a new process would do
    t0 = time.perf_counter()
    index = open_index(store_dir=store)
    reopen_s = time.perf_counter() - t0

    questions = [p.question for p in load_split("test", args.queries)]
    t0 = time.perf_counter()
    queries = np.asarray(index.embed(questions), dtype=np.float32)
    embed_ms = (time.perf_counter() - t0) * 1000 / len(questions)
    stored = index._collection.get(include=["embeddings", "metadatas"])
    matrix = np.asarray(stored["embeddings"], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    row_idx = np.array([m["idx"] for m in stored["metadatas"]])

    chroma_ms, exact_ms, recalls = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        out = index._collection.query(query_embeddings=[q.tolist()], n_results=args.k, include=["metadatas"])
        chroma_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        sims = matrix @ (q / np.linalg.norm(q))
        top = np.argpartition(-sims, args.k)[:args.k]
        exact = set(row_idx[top].tolist())
        exact_ms.append((time.perf_counter() - t0) * 1000)
        recalls.append(len(exact & {m["idx"] for m in out["metadatas"][0]}) / args.k)

    print(f"index: {len(index)} training problems, all-MiniLM-L6-v2 (384-d), Chroma HNSW cosine, {store}")
    print(f"commit {git_commit()}, {os.cpu_count()} cores")
    print(f"build  {build_s:8.1f} s{'  (reused an existing index, not a build)' if existed else ''}")
    print(f"reopen {reopen_s:8.2f} s  (new Chroma client, hashes checked; the embedding model stays loaded in-process)")
    print(f"query embedding {embed_ms:6.2f} ms/query (batched, {len(questions)} test questions)")
    print(f"{'search':14s} {'median ms':>10s} {'p95 ms':>8s}")
    for name, ms in (("chroma top-%d" % args.k, chroma_ms), ("numpy exact", exact_ms)):
        print(f"{name:14s} {median(ms):10.2f} {sorted(ms)[int(0.95 * len(ms)) - 1]:8.2f}")
    print(f"chroma/exact latency: {median(chroma_ms) / median(exact_ms):.1f}x; "
          f"recall@{args.k} of chroma vs exact: {sum(recalls) / len(recalls):.4f} (goal >= 0.99; <= 5 ms/query)")


if __name__ == "__main__":
    main()
