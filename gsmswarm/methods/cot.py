"""Chain-of-thought: few-shot prompt -> completion(s) -> answer filters. Greedy unless n > 1."""
from ..answers import FILTERS, INVALID, extract_answer
from ..data import Problem
from ..prompts import render


def solve(problem: Problem, backend, template: str, gen) -> dict:
    """The method-specific part of a record: completions, preds per filter, the chosen pred."""
    prompt = render(template, question=problem.question)
    completions = backend.generate(prompt, gen)
    texts = [c.text for c in completions]
    pred = extract_answer(texts[0]) if texts else INVALID
    return {
        "completions": texts,
        "preds": {name: [f(t) for t in texts] for name, f in FILTERS.items()},
        "pred": pred,
        "correct": pred == problem.gold,
        "truncated": [c.truncated for c in completions],
        "n_prompt_tokens": backend.n_tokens(prompt),
        "n_completion_tokens": [len(c.token_ids) for c in completions],
        "latency_s": round(sum(c.latency_s for c in completions), 3),
    }
