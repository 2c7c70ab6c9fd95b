"""Chain-of-thought: few-shot prompt -> completion(s) -> answer filters.

Greedy with one completion; with `gen.n` > 1 sampled completions it is self-consistency (Wang et al.,
2023): the record's `pred` is the majority vote over every completion's answer, and because every
completion's preds are kept, maj@k for any k <= n is computed later from prefixes (metrics.maj_at_k).
"""
from ..answers import FILTERS, extract_answer
from ..data import Problem
from ..prompts import render
from ..results import answer_fields

SLOTS = {"question"}


def solve(problem: Problem, backend, template: str, gen):
    """The method-specific part of a record: completions, preds per filter, the voted pred."""
    return (yield from complete(render(template, question=problem.question), problem, backend, gen))


def complete(prompt: str, problem: Problem, backend, gen):
    """Ask for completions of a finished prompt and grade their text: what every prompting method shares. Like
    every `solve`, a generator: it yields `(prompt, gen)` and receives the completions."""
    completions = yield prompt, gen
    return answer_fields(problem, prompt, backend, completions, text_preds([c.text for c in completions]))


def text_preds(texts) -> dict:
    """Each completion's answer (`extract_answer`) and what each answer filter reads from it."""
    return {"answer": [extract_answer(t) for t in texts], **{name: [f(t) for t in texts] for name, f in FILTERS.items()}}
