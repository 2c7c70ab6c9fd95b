"""Chain-of-thought: few-shot prompt -> completion(s) -> answer filters.

Greedy with one completion; with `gen.n` > 1 sampled completions it is self-consistency (Wang et al.,
2023): the record's `pred` is the majority vote over every completion's answer, and because every
completion's preds are kept, maj@k for any k <= n is computed later from prefixes (metrics.maj_at_k).
"""
from ..answers import FILTERS, extract_answer
from ..data import Problem
from ..metrics import majority_vote
from ..prompts import render

PROMPT, SLOTS = "cot_8shot", {"question"}


def solve(problem: Problem, backend, template: str, gen):
    """The method-specific part of a record: completions, preds per filter, the voted pred."""
    return (yield from complete(render(template, question=problem.question), problem, backend, gen))


def complete(prompt: str, problem: Problem, backend, gen):
    """Ask for completions of a finished prompt and grade them: the record fields every prompting method
    shares. Like every `solve`, a generator: it yields `(prompt, gen)` and receives the completions."""
    completions = yield prompt, gen
    return {
        **grade([c.text for c in completions], problem, prompt, backend),
        "truncated": [c.truncated for c in completions],
        "n_completion_tokens": [len(c.token_ids) for c in completions],
        "latency_s": round(sum(c.latency_s for c in completions), 3),
    }


def grade(texts, problem: Problem, prompt: str, backend) -> dict:
    """Preds per filter for each completion, and the vote over them."""
    preds = {"answer": [extract_answer(t) for t in texts]}
    preds.update({name: [f(t) for t in texts] for name, f in FILTERS.items()})
    pred = majority_vote(preds["answer"])
    return {"completions": list(texts), "preds": preds, "pred": pred, "correct": pred == problem.gold,
            "n_prompt_tokens": backend.n_tokens(prompt)}
