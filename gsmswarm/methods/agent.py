"""An agent that decides for itself (ReAct, Yao et al., 2023): the model interleaves `Thought n:` and
`Action n: name[argument]`, and the engine answers each action with an `Observation n:` before it continues.

Three actions: `search[query]` shows the `--search-k` nearest solved *training* problems to the query (the RAG
index; written as one line of `Q:`/`A:` worked examples), `calculate[expression]` the value the calculator's
sandbox computes (a refused or failing expression is an observation saying so), `finish[answer]` ends the
trace with the answer. So retrieval is an action the model takes when it wants to, where RAG puts exemplars in
front of every question. Generation pauses at each `]` that closes an action (as the calculator pauses at
`=`); the trace ends at `finish`, after `--max-steps` actions, at the token budget (summed over the trace, as
the calculator's), or when the model stops without a parsable action.

A small model often writes its answer as prose ("The answer is 12.") and ends, or goes on to write an
observation itself (the retrieved problems' "Solved problem 3: ..."), which only a tool may write. ReAct's own
harness (Yao et al.'s code) meets this by asking for the action: when a thought ends without one, it writes
`Action n:` on the next line and lets the model name it. This one does the same, once per step: generation also
stops where the model starts an observation (`TOOL_TEXT`, cut from the trace), and a step whose action came
after the harness's `Action n:` is marked `asked`. A trace that still gives no action stops as `no_action`.
Each record keeps the whole trace:
every thought, action, argument and observation, with the retrieved ids and distances and the calculated
values, and why it stopped. The answer is finish's argument as the flexible filter reads a text (its last
number, `$` and `,` dropped: `finish[18 dollars]` answers 18); a trace that does not finish has none.
"""
import dataclasses
import re

from ..answers import FILTERS, INVALID
from ..backends import Completion
from ..config import UserError
from ..data import Problem
from ..prompts import render
from ..results import answer_fields
from ..sandbox import Sandbox
from .calculator import calculate

SLOTS = {"question"}
ACTIONS = ("search", "calculate", "finish")
RECORD_FIELDS = {
    "agent": "search_k, max_steps and embedder",
    "trace": "per action: thought, action, argument, observation (null for finish); search: retrieved (train idx "
             "and distance, nearest first); calculate: value (null: refused); asked: true where the action came "
             "after the harness wrote `Action n:`",
    "steps": "actions taken", "stop_reason": "finish, step_limit, token_limit or no_action",
}
TOOL_TEXT = ("\nObservation", "Solved problem")  # what only a tool writes: the model's thought is cut where it starts
MAX_QUERY = 300  # characters of a search query the index sees; a longer one is cut, and the observation says so
_ACTION = re.compile(r"Action(?: \d+)?:\s*(\w+)\[([^\[\]\n]*)$")  # the line an action's closing "]" ends
_THOUGHT = re.compile(r"^\s*(?:Thought(?: \d+)?:\s*)?")


def run_settings(config) -> dict:
    return {"agent": {"search_k": config.search_k, "max_steps": config.max_steps, "embedder": config.embedder}}


def run_tag(config) -> str:
    return f"@k{config.search_k}-s{config.max_steps}"


def setup(config) -> dict:
    """The RAG index (a train/dev question must not find itself) and one sandbox worker for the whole run."""
    from ..retrieval import open_index

    return {"index": open_index(config.embedder, config.index_dir, config.rebuild_index), "k": config.search_k,
            "max_steps": config.max_steps, "exclude_self": config.split != "test", "sandbox": Sandbox(config.sandbox)}


def observe_search(neighbours) -> str:
    """Retrieved problems as an observation: one line, so a trace keeps one step per line."""
    return " ".join(f"Solved problem {i}: Q: {n.problem.question} A: {n.problem.chain_of_thought}"
                    for i, n in enumerate(neighbours, 1))


def solve(problem: Problem, backend, template: str, gen, index, k: int, max_steps: int, exclude_self: bool,
          sandbox: Sandbox):
    if gen.n != 1:
        raise UserError("--method agent decodes one trace per problem (--samples 1)")
    prompt = render(template, question=problem.question)
    text, trace, token_ids, latency = "", [], [], 0.0
    segment_start = 0  # where the text generated since the last observation starts
    answer, stop_reason, asked = INVALID, None, False  # asked: the harness wrote this step's "Action n:"
    while stop_reason is None:
        budget = gen.max_new_tokens - len(token_ids)
        if budget <= 0:
            stop_reason = "token_limit"
            break
        [c] = yield prompt + text, dataclasses.replace(gen, max_new_tokens=budget, stop=("]", *TOOL_TEXT, *gen.stop))
        token_ids, latency = token_ids + list(c.token_ids), latency + c.latency_s
        text += c.text
        if c.truncated:
            stop_reason = "token_limit"
            break
        if c.stop != "]":  # end of turn, a stop string of the prompt, or an observation of the model's own
            if asked:
                stop_reason = "no_action"
                break
            text, asked = text.rstrip() + f"\nAction {len(trace) + 1}:", True
            continue
        text += "]"
        segment = text[segment_start:-1]
        lines = segment.rstrip().split("\n")
        action = _ACTION.search(lines[-1])
        if action is None:  # a "]" outside an action (a thought's "[1]"): generation goes on
            continue
        name, argument = action.group(1), action.group(2).strip()
        thought = "\n".join([*lines[:-1], lines[-1][:action.start()]])  # a thought may share the action's line
        step = {"thought": _THOUGHT.sub("", thought).strip(), "action": name, "argument": argument,
                **({"asked": True} if asked else {})}
        trace.append(step)
        asked = False
        if name == "finish":
            step["observation"], answer, stop_reason = None, FILTERS["flexible"](argument), "finish"
            break
        step["observation"] = _act(step, problem, index, k, exclude_self, sandbox)
        text += f"\nObservation {len(trace)}: {step['observation']}\n"
        segment_start = len(text)
        if len(trace) == max_steps:
            stop_reason = "step_limit"
    completion = Completion(text, token_ids, stop_reason == "token_limit", latency)  # model and tools as one
    return {**answer_fields(problem, prompt, backend, [completion], {"answer": [answer]}),
            "trace": trace, "steps": len(trace), "stop_reason": stop_reason, "isolation": sandbox.kind}


def _act(step: dict, problem: Problem, index, k: int, exclude_self: bool, sandbox: Sandbox) -> str:
    """Run a search or calculate action (filling the step's retrieved or value) and return its observation."""
    name, argument = step["action"], step["argument"]
    if name == "search":
        if not argument:
            return "search needs a query: search[query]"
        query = argument[:MAX_QUERY]
        neighbours = index.query(query, k, exclude_idx=problem.idx if exclude_self else None)
        step["retrieved"] = [{"idx": n.idx, "distance": round(n.distance, 4)} for n in neighbours]
        cut = f"(the query was cut to its first {MAX_QUERY} characters) " if len(argument) > MAX_QUERY else ""
        return cut + observe_search(neighbours)
    if name == "calculate":
        step["value"] = calculate(argument, sandbox)
        return step["value"] if step["value"] is not None else (
            f"cannot calculate {argument!r}: only numbers and + - * / ( ) %")
    return f"unknown action {name}: the actions are {', '.join(ACTIONS)}"
