"""The ReAct agent: each action the model writes is answered before generation goes on. Scripted completions
show the bookkeeping (observations, trace, why it stopped); a real model with a real index and sandbox shows it
through a backend, one problem at a time and inside a batch."""
import re

import pytest

from gsmswarm.backends.scripted import ScriptedBackend
from gsmswarm.config import GenerationConfig
from gsmswarm.data import Problem, load_split
from gsmswarm.engine import solve_one
from gsmswarm.methods import get_method
from gsmswarm.methods.agent import observe_search
from gsmswarm.prompts import load_prompt
from gsmswarm.retrieval import Neighbour

PROBLEM = Problem(7, "There were 21 trees and 15 were cut. How many are left?", "21-15=6\n#### 6", "6")
TRAIN = {p.idx: p for p in load_split("train")}


class Index:
    """Two fixed training problems for any query; remembers what was asked."""

    def __init__(self):
        self.asked = []

    def query(self, question, k, exclude_idx=None):
        self.asked.append((question, k, exclude_idx))
        return [Neighbour(i, 0.25 + i / 1e4, TRAIN[i]) for i in (3, 4)][:k]


def solve(turns, sandbox, gen=GenerationConfig(), k=2, max_steps=8, exclude_self=False):
    backend, index = ScriptedBackend(turns), Index()
    record = solve_one(get_method("agent"), PROBLEM, backend, load_prompt("agent_8shot"), gen, index=index, k=k,
                       max_steps=max_steps, exclude_self=exclude_self, sandbox=sandbox)
    return record, backend, index


def test_a_trace_searches_calculates_and_finishes(sandbox):
    record, backend, index = solve([(" Look it up.\nAction 1: search[trees cut down", "]"),
                                    ("Thought 2: Subtract.\nAction 2: calculate[21 - 15", "]"),
                                    ("Thought 3: 6 are left.\nAction 3: finish[6 trees", "]")],
                                   sandbox, GenerationConfig(max_new_tokens=30), k=1, exclude_self=True)
    assert index.asked == [("trees cut down", 1, 7)]  # a dev/train problem never finds itself
    seen = observe_search([Neighbour(3, 0.2503, TRAIN[3])])
    assert record["trace"] == [
        {"thought": "Look it up.", "action": "search", "argument": "trees cut down", "observation": seen,
         "retrieved": [{"idx": 3, "distance": 0.2503}]},
        {"thought": "Subtract.", "action": "calculate", "argument": "21 - 15", "observation": "6", "value": "6"},
        {"thought": "6 are left.", "action": "finish", "argument": "6 trees", "observation": None}]
    assert (record["steps"], record["stop_reason"], record["pred"], record["correct"]) == (3, "finish", "6", True)
    (p1, g1), (p2, g2), (p3, g3) = backend.seen
    assert g1.stop[0] == "]" and [g.max_new_tokens for g in (g1, g2, g3)] == [30, 27, 24]
    assert p1.endswith(f"Question: {PROBLEM.question}\nThought 1:")
    assert p2 == p1 + f" Look it up.\nAction 1: search[trees cut down]\nObservation 1: {seen}\n"
    assert p3.endswith("Action 2: calculate[21 - 15]\nObservation 2: 6\n")
    assert record["completions"] == [p3[len(p1):] + "Thought 3: 6 are left.\nAction 3: finish[6 trees]"]
    assert record["n_completion_tokens"] == [9] and record["truncated"] == [False]


def test_refused_unknown_and_stray_brackets_are_observations_not_errors(sandbox):
    record, backend, _ = solve([(" See note [1", "]"),  # not an action: generation goes on
                                (" below.\nAction 1: calculate[3 apples * 2", "]"),
                                ("Thought 2: Hm. Action 2: lookup[apples", "]"),
                                ("Thought 3: I give up.", "\n\n"), (" Nothing.", None)], sandbox)
    assert [s["action"] for s in record["trace"]] == ["calculate", "lookup"]
    assert record["trace"][0]["thought"] == "See note [1] below."
    assert record["trace"][0]["value"] is None
    assert record["trace"][0]["observation"] == "cannot calculate '3 apples * 2': only numbers and + - * / ( ) %"
    assert record["trace"][1]["observation"] == "unknown action lookup: the actions are search, calculate, finish"
    assert record["trace"][1]["thought"] == "Hm."  # on the action's own line
    assert (record["stop_reason"], record["pred"], record["correct"]) == ("no_action", "[invalid]", False)
    assert len(backend.seen) == 5  # the harness asked once for the third action, and got none
    assert backend.seen[-1][0].endswith("Thought 3: I give up.\nAction 3:")


def test_a_thought_that_ends_or_writes_an_observation_is_asked_for_its_action(sandbox):
    """ReAct's harness: where the model answers in prose and ends, or starts an observation of its own (which
    only a tool writes, and is cut), the next line is `Action n:` and the model names the action."""
    record, backend, index = solve([(" Look.\nAction 1: search[trees", "]"),
                                    ("Thought 2: 21 - 15 = 6, as in ", "Solved problem"), (" calculate[21 - 15", "]"),
                                    ("Thought 3: The answer is 6.", None), (" finish[6", "]")], sandbox)
    assert [(s["action"], s.get("asked", False)) for s in record["trace"]] == [
        ("search", False), ("calculate", True), ("finish", True)]
    assert record["trace"][1]["thought"] == "21 - 15 = 6, as in"
    assert (record["stop_reason"], record["pred"], record["correct"]) == ("finish", "6", True)
    prompts = [p for p, _ in backend.seen]
    assert prompts[2] == prompts[1] + "Thought 2: 21 - 15 = 6, as in\nAction 2:"
    assert prompts[4] == prompts[3] + "Thought 3: The answer is 6.\nAction 3:"
    assert {"]", "\nObservation", "Solved problem"} <= set(backend.seen[0][1].stop)


def test_an_empty_or_enormous_query_is_said_so(sandbox):
    from gsmswarm.methods.agent import MAX_QUERY

    record, _, index = solve([(" Look.\nAction 1: search[", "]"), ("Thought 2: Again.\nAction 2: search[" + "x" * 1000, "]"),
                              ("Thought 3: Done.\nAction 3: finish[1", "]")], sandbox, k=1)
    assert record["trace"][0]["observation"] == "search needs a query: search[query]"
    assert index.asked == [("x" * MAX_QUERY, 1, None)]
    assert record["trace"][1]["observation"].startswith(f"(the query was cut to its first {MAX_QUERY} characters) Solved")


def test_the_step_limit_and_the_token_budget_end_a_runaway_trace(sandbox):
    step = (" more.\nAction: calculate[1 + 1", "]")
    record, backend, _ = solve([step] * 5, sandbox, max_steps=2)
    assert (record["steps"], record["stop_reason"], len(backend.seen)) == (2, "step_limit", 2)
    record, backend, _ = solve([step] * 5, sandbox, GenerationConfig(max_new_tokens=6))
    assert (record["steps"], record["stop_reason"], len(backend.seen)) == (2, "token_limit", 2)
    assert record["truncated"] == [True] and record["pred"] == "[invalid]"


def test_the_prompts_searches_show_what_the_tool_shows():
    """The example traces' observations are the tool's own text for real training problems (the ones the full
    index returns for those queries, listed in prompts/README.md), so the model sees the format it will get."""
    text = load_prompt("agent_8shot")
    searches = re.findall(r"search\[([^\]]+)\]\nObservation 1: (.*)\n", text)
    assert [q for q, _ in searches] == ["things added each day from monday to thursday", "money left after spending"]
    for (_, observation), ids in zip(searches, [(2619, 5982), (2042, 4892)]):
        assert observation == observe_search([Neighbour(i, 0.0, TRAIN[i]) for i in ids])
    from gsmswarm.convert import ensure_model

    chat = load_prompt("chat_agent_8shot", str(ensure_model()))
    assert all(observation in chat for _, observation in searches)


@pytest.mark.slow
def test_real_model_real_index_one_at_a_time_and_in_a_batch(local_backend, sandbox, tmp_path):
    """SmolLM2 with a real index of 200 training problems: records through the engine's batch equal the ones
    solved one at a time (each pause a new request), and every observation is the tool's answer."""
    from gsmswarm.engine import _Loop
    from gsmswarm.retrieval import open_index

    index = open_index(store_dir=tmp_path / "index", limit=200)
    method, template = get_method("agent"), load_prompt("agent_8shot")
    gen = GenerationConfig(max_new_tokens=60)
    tools = dict(index=index, k=1, max_steps=3, exclude_self=False, sandbox=sandbox)
    problems = load_split("test", 3)
    alone = {p.idx: solve_one(method, p, local_backend, template, gen, **tools) for p in problems}
    assert any(r["steps"] for r in alone.values()), "greedy SmolLM2 takes an action on one of these: the loop must run"
    for r in alone.values():
        for s in r["trace"]:
            if s["action"] == "calculate" and s["value"] is not None:
                assert f"calculate[{s['argument']}]\nObservation" in r["completions"][0]
    written = []

    class Writer:
        done = {}

        def write(self, record):
            written.append(record)

    _Loop(method, local_backend, template, gen, tools, {"run_id": "agent"}, Writer(), tmp_path / "agent.jsonl",
          problems).run(problems)
    assert sorted(r["idx"] for r in written) == [0, 1, 2]
    for r in written:
        want = alone[r["idx"]]
        assert r["completions"] == want["completions"] and r["trace"] == want["trace"]
