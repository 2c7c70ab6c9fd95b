"""Program-aided solving (PAL, Gao et al., 2023): the model writes the body of `def solution():`, the program
runs in the sandbox (`gsmswarm.sandbox`), and its returned number is the answer.

The prompt (`prompts/pal_8shot.txt`) shows the 8 exemplar questions of the CoT prompt as programs and ends
with the header of the question's own function, so the completion is the function body. Programs contain
blank lines, so a "\\n\\n" stop string becomes PAL's separator "\\n\\n\\n". Each record keeps the program, the
sandbox's verdict and the value or error; every filter's pred is the program's value.

The prompt must end where the exemplars have a token boundary, and the docstring's closing quotes are
tokenized differently by model: SmolLM2 cuts right after them, Qwen2 makes full stop, quotes and newline one
token. A prompt that ends inside a token asks for a continuation the model never saw: Qwen2.5-Coder then
starts with blank lines, which end the program before its first statement, on 8 of the first 10 test problems.
So the newline after the docstring joins the prompt where the tokenizer glues it to the quotes
(`closing_newline`).
"""
import dataclasses

from ..answers import INVALID, number_answer
from ..data import Problem
from ..prompts import render
from ..results import answer_fields
from ..sandbox import Sandbox

SLOTS = {"question"}
RECORD_FIELDS = {"programs": "each completion as the program that ran", "sandbox": "per program: verdict, value, error"}


def closing_newline(tokenizer) -> str:
    """"\\n" if `tokenizer` puts the newline after a docstring's closing quotes into their token, else ""."""
    text = 'def solution():\n    """Q."""\n    x = 1\n'
    ends = {end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]}
    return "" if text.index('"""\n') + 3 in ends else "\n"


def setup(config) -> dict:
    """One isolated sandbox worker for the whole run (starting it per program would cost its start-up each time)."""
    return {"sandbox": Sandbox(config.sandbox)}


def solve(problem: Problem, backend, template: str, gen, sandbox: Sandbox):
    gen = dataclasses.replace(gen, stop=tuple("\n\n\n" if s == "\n\n" else s for s in gen.stop))
    prompt = render(template, question=problem.question) + closing_newline(backend.tokenizer)
    header = prompt[prompt.rindex("def solution():"):]
    completions = yield prompt, gen
    programs, runs, preds = [], [], []
    for c in completions:
        program = header + c.text
        result = sandbox.run(program)
        programs.append(program)
        runs.append({"verdict": result.verdict, "value": result.value, "error": result.error})
        preds.append(number_answer(result.value) if result.ok else INVALID)
    # the program's value is the answer: the text filters do not apply to a program (k programs: their vote)
    return {**answer_fields(problem, prompt, backend, completions, {"answer": preds}),
            "programs": programs, "sandbox": runs, "isolation": sandbox.kind}
