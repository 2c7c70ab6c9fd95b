"""RAG: the k training problems nearest to the question (Chroma, sentence-transformers) become the few-shot
exemplars of a chain-of-thought prompt (DSPy's KNNFewShot), in place of the 8 fixed exemplars of Wei et al.

Exemplars are written exactly as in `prompts/cot_8shot.txt` (`Q:`/`A:`, the steps as one paragraph, "The
answer is N.", a blank line between), so RAG differs from fixed few-shot CoT only in which problems are shown;
a chat prompt's `[exemplars]` makes each one a user turn and an assistant turn (`prompts.Template`).
With `--soft-prompt` this is prompt tuning + RAG. Each record keeps the retrieved ids and distances.
"""
from ..data import Problem
from ..prompts import render
from .cot import complete

SLOTS = {"exemplars", "question"}
RECORD_FIELDS = {"rag": "k, order and embedder", "retrieved": "the exemplars' train idx and distance, nearest first"}


def run_settings(config) -> dict:
    return {"rag": {"k": config.rag_k, "order": config.rag_order, "embedder": config.embedder}}


def run_tag(config) -> str:
    return f"@k{config.rag_k}-{config.rag_order}"


def setup(config) -> dict:
    """Open (or build once) the index; a train/dev question must not retrieve itself."""
    from ..retrieval import open_index

    index = open_index(config.embedder, config.index_dir, config.rebuild_index)
    return {"index": index, "k": config.rag_k, "order": config.rag_order, "exclude_self": config.split != "test"}


def exemplars(problems, template) -> str:
    """Solved problems as the template writes an exemplar: `Q:`/`A:` text, or turns of a chat prompt."""
    return "".join(template.exemplar(p.question, p.chain_of_thought) for p in problems)


def solve(problem: Problem, backend, template, gen, index, k: int, order: str, exclude_self: bool):
    neighbours = index.query(problem.question, k, exclude_idx=problem.idx if exclude_self else None)
    shown = neighbours[::-1] if order == "nearest_last" else neighbours
    prompt = render(template, exemplars=exemplars([n.problem for n in shown], template), question=problem.question)
    record = yield from complete(prompt, problem, backend, gen)
    record["retrieved"] = [{"idx": n.idx, "distance": round(n.distance, 4)} for n in neighbours]  # nearest first
    return record
