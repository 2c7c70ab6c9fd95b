"""Calculator in the loop: each `<<expression=` the model writes is finished by the sandbox before generation
goes on; scripted turns show the bookkeeping, a real run shows it through a backend."""
from gsmswarm.backends import Completion
from gsmswarm.config import GenerationConfig
from gsmswarm.data import Problem, load_split
from gsmswarm.methods import get_method
from gsmswarm.prompts import load_prompt

PROBLEM = Problem(0, "There were 21 trees and 15 were cut. How many are left?", "21-15=6\n#### 6", "6")


class Turns:
    """A backend that answers each call with the next scripted (text, stop) and records the prompts."""

    name = "scripted"

    def __init__(self, *turns):
        self.turns, self.prompts = list(turns), []

    def generate(self, prompt, gen):
        self.prompts.append((prompt, gen.stop, gen.max_new_tokens))
        text, stop = self.turns.pop(0)
        return [Completion(text, [0] * 3, truncated=False, latency_s=0.1, stop=stop)]

    def n_tokens(self, text):
        return 1


def test_the_sandbox_writes_the_value_and_generation_continues():
    backend = Turns((" So 21 - 15 = ", "<<"), ("21-15", "="), (" trees. The answer is 6.", "\n\n"))
    record = get_method("calculator").solve(PROBLEM, backend, load_prompt("cot_8shot_calc"),
                                            GenerationConfig(max_new_tokens=20))
    assert record["completions"] == [" So 21 - 15 = <<21-15=6>>6 trees. The answer is 6."]
    assert record["calculator_calls"] == [{"expression": "21-15", "value": "6"}]
    assert record["correct"] and record["n_completion_tokens"] == [9]
    (_, stop_a, budget_a), (prompt_b, stop_b, budget_b), (prompt_c, _, budget_c) = backend.prompts
    assert stop_a[0] == "<<" and stop_b[:2] == ("=", ">>") and (budget_a, budget_b, budget_c) == (20, 17, 14)
    assert prompt_b.endswith(" So 21 - 15 = <<") and prompt_c.endswith("<<21-15=6>>6")


def test_what_is_not_arithmetic_is_left_to_the_model():
    backend = Turns(("Cost ", "<<"), ("price", "="), ("4", ">>"), ("4. The answer is 4.", "\n\n"))
    record = get_method("calculator").solve(PROBLEM, backend, load_prompt("cot_8shot_calc"), GenerationConfig())
    assert record["calculator_calls"] == [{"expression": "price", "value": None}]
    assert record["completions"] == ["Cost <<price=4>>4. The answer is 4."]


def test_division_and_the_token_budget():
    backend = Turns(("Half: ", "<<"), ("7/2", "="), ("", None))
    record = get_method("calculator").solve(PROBLEM, backend, load_prompt("cot_8shot_calc"),
                                            GenerationConfig(max_new_tokens=6))
    assert record["completions"] == ["Half: <<7/2=3.5>>3.5"] and record["truncated"] == [True]


def test_real_model_through_the_calculator(local_backend):
    problem = load_split("test", 2)[1]
    record = get_method("calculator").solve(problem, local_backend, load_prompt("cot_8shot_calc"),
                                            GenerationConfig(max_new_tokens=48))
    assert record["n_completion_tokens"][0] <= 48
    for call in record["calculator_calls"]:
        if call["value"] is not None:
            assert f"<<{call['expression']}={call['value']}>>{call['value']}" in record["completions"][0]
