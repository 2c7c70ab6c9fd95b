"""Chain-of-thought with a calculator in the loop (as OpenAI's GSM8K calculator does during sampling): the
prompt's exemplars annotate each step as `21 - 15 = <<21-15=6>>6`; whenever the model opens `<<` and writes an
expression up to `=`, generation pauses, the sandbox evaluates the expression, and its value plus `>>` are
appended before generation continues. The model still chooses what to compute; only the arithmetic is taken
out of its hands. Works through either backend (each pause is a new request with the extended text).
"""
import dataclasses
import re

from ..answers import INVALID, number_answer
from ..backends import Completion
from ..config import UserError
from ..data import Problem
from ..prompts import render
from ..sandbox import Sandbox
from ..results import answer_fields
from .cot import text_preds

SLOTS = {"question"}
RECORD_FIELDS = {"calculator_calls": "each <<expression= and the value computed (null: left to the model)"}
_EXPRESSION = re.compile(r"[\d\s.+\-*/()%]+")  # what the calculator accepts: arithmetic on numbers only


def setup(config) -> dict:
    """One isolated sandbox worker for the whole run."""
    return {"sandbox": Sandbox(config.sandbox)}


def solve(problem: Problem, backend, template: str, gen, sandbox: Sandbox):
    if gen.n != 1:
        raise UserError("--method calculator decodes one completion per problem (--samples 1)")
    prompt = render(template, question=problem.question)
    text, calls, token_ids, latency, truncated = "", [], [], 0.0, False
    inside = False  # after an unclosed "<<": the model is writing an expression
    while True:
        budget = gen.max_new_tokens - len(token_ids)
        if budget <= 0:
            truncated = True
            break
        stop = ("=", ">>", *gen.stop) if inside else ("<<", *gen.stop)
        [c] = yield prompt + text, dataclasses.replace(gen, max_new_tokens=budget, stop=stop)
        token_ids, latency = token_ids + list(c.token_ids), latency + c.latency_s
        text += c.text
        if c.stop == "<<":
            text, inside = text + "<<", True
        elif c.stop == "=" and inside:
            expression = text[text.rindex("<<") + 2:]
            value = calculate(expression, sandbox)
            calls.append({"expression": expression, "value": value})
            text, inside = text + "=" + (f"{value}>>{value}" if value is not None else ""), value is None
        elif c.stop == ">>" and inside:
            text, inside = text + ">>", False
        else:  # a stop string of the prompt, end of sequence, or the token limit
            truncated = c.truncated
            break
    answer = Completion(text, token_ids, truncated, latency)  # the model's pieces and the calculator's values as one
    return {**answer_fields(problem, prompt, backend, [answer], text_preds([text])),
            "calculator_calls": calls, "isolation": sandbox.kind}


def calculate(expression: str, sandbox: Sandbox):
    """The expression's value written as answers are (no '.0', at most 6 decimals), or None if it is not
    plain arithmetic or fails (then the model finishes the annotation itself; the agent is told so)."""
    if not _EXPRESSION.fullmatch(expression) or not expression.strip():
        return None
    result = sandbox.run(f"def solution():\n    return {expression.strip()}\n", timeout_s=2)
    value = number_answer(result.value) if result.ok else INVALID
    return None if value == INVALID else value
