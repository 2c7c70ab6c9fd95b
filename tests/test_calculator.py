"""Calculator in the loop: each `<<expression=` the model writes is finished by the sandbox before generation
goes on; scripted completions show the bookkeeping, a real run shows it through a backend."""
from gsmswarm.backends.scripted import ScriptedBackend
from gsmswarm.config import GenerationConfig
from gsmswarm.data import Problem, load_split
from gsmswarm.engine import solve_one
from gsmswarm.methods import get_method
from gsmswarm.prompts import load_prompt

PROBLEM = Problem(0, "There were 21 trees and 15 were cut. How many are left?", "21-15=6\n#### 6", "6")


def test_the_sandbox_writes_the_value_and_generation_continues(sandbox):
    backend = ScriptedBackend([(" So 21 - 15 = ", "<<"), ("21-15", "="), (" trees. The answer is 6.", "\n\n")])
    record = solve_one(get_method("calculator"), PROBLEM, backend, load_prompt("cot_8shot_calc"),
                       GenerationConfig(max_new_tokens=20), sandbox=sandbox)
    assert record["completions"] == [" So 21 - 15 = <<21-15=6>>6 trees. The answer is 6."]
    assert record["calculator_calls"] == [{"expression": "21-15", "value": "6"}]
    assert record["correct"] and record["n_completion_tokens"] == [9]
    (_, gen_a), (prompt_b, gen_b), (prompt_c, gen_c) = backend.seen
    assert gen_a.stop[0] == "<<" and gen_b.stop[:2] == ("=", ">>")
    assert [g.max_new_tokens for g in (gen_a, gen_b, gen_c)] == [20, 17, 14]
    assert prompt_b.endswith(" So 21 - 15 = <<") and prompt_c.endswith("<<21-15=6>>6")


def test_what_is_not_arithmetic_is_left_to_the_model(sandbox):
    backend = ScriptedBackend([("Cost ", "<<"), ("price", "="), ("4", ">>"), ("4. The answer is 4.", "\n\n")])
    record = solve_one(get_method("calculator"), PROBLEM, backend, load_prompt("cot_8shot_calc"),
                       GenerationConfig(), sandbox=sandbox)
    assert record["calculator_calls"] == [{"expression": "price", "value": None}]
    assert record["completions"] == ["Cost <<price=4>>4. The answer is 4."]


def test_division_and_the_token_budget(sandbox):
    backend = ScriptedBackend([("Half: ", "<<"), ("7/2", "="), ("", None)])
    record = solve_one(get_method("calculator"), PROBLEM, backend, load_prompt("cot_8shot_calc"),
                       GenerationConfig(max_new_tokens=6), sandbox=sandbox)
    assert record["completions"] == ["Half: <<7/2=3.5>>3.5"] and record["truncated"] == [True]


def test_real_model_through_the_calculator(local_backend, sandbox):
    problem = load_split("test", 2)[1]
    record = solve_one(get_method("calculator"), problem, local_backend, load_prompt("cot_8shot_calc"),
                       GenerationConfig(max_new_tokens=48), sandbox=sandbox)
    assert record["n_completion_tokens"][0] <= 48
    assert record["calculator_calls"], "greedy SmolLM2 writes <<2*2= on this problem: the loop below must run"
    for call in record["calculator_calls"]:
        if call["value"] is not None:
            assert f"<<{call['expression']}={call['value']}>>{call['value']}" in record["completions"][0]
