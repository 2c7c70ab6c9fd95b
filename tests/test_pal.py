"""PAL: the program is the prompt's function header plus the completion; its value is graded like any
answer; a real completion from the embedded model goes through the sandbox."""
import pytest

from gsmswarm.answers import INVALID, number_answer
from gsmswarm.backends.scripted import ScriptedBackend
from gsmswarm.config import GenerationConfig
from gsmswarm.data import Problem, load_split
from gsmswarm.engine import solve_one
from gsmswarm.methods import get_method
from gsmswarm.prompts import load_prompt

PROBLEM = Problem(0, "Tom has 3 apples and buys 2 more. How many apples does he have?", "3+2=5\n#### 5", "5")


@pytest.mark.parametrize("value, pred", [("18", "18"), ("18.0", "18"), ("0.30000000000000004", "0.3"),
                                         ("-4.5", "-4.5"), ("1e3", "1000"), ("nan?", INVALID)])
def test_program_values_become_preds(value, pred):
    assert number_answer(value) == pred


def qwen2_like_tokenizer():
    """A real fast tokenizer with Qwen2's pre-tokenizer (one token per pre-token): enough to know where its
    token boundaries fall, without the optional study model."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gsmswarm.convert import QWEN2_SPLIT

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_program_is_header_plus_completion_and_its_value_is_the_answer(local_backend, sandbox):
    backend = ScriptedBackend(["\n    apples = 3 + 2\n    return apples"], local_backend.tokenizer)
    record = solve_one(get_method("pal"), PROBLEM, backend, load_prompt("pal_8shot"),
                       GenerationConfig(), sandbox=sandbox)
    prompt, gen = backend.seen[0]
    assert prompt.endswith(f'def solution():\n    """{PROBLEM.question}"""')
    assert gen.stop == ("\n\n\n", "\nQ:")  # programs have blank lines; the exemplars are 3+ newlines apart
    assert record["programs"][0] == f'def solution():\n    """{PROBLEM.question}"""\n    apples = 3 + 2\n    return apples'
    assert record["sandbox"] == [{"verdict": "ok", "value": "5", "error": None}]
    assert record["pred"] == "5" and record["correct"] and record["preds"] == {"answer": ["5"]}  # no text filters


def test_prompt_ends_with_the_newline_where_the_tokenizer_glues_it_to_the_closing_quotes(sandbox):
    """Qwen2 makes the closing quotes and the newline one token: its prompt includes the newline."""
    backend = ScriptedBackend(["    apples = 3 + 2\n    return apples"], qwen2_like_tokenizer())
    record = solve_one(get_method("pal"), PROBLEM, backend, load_prompt("pal_8shot"),
                       GenerationConfig(), sandbox=sandbox)
    assert backend.seen[0][0].endswith(f'def solution():\n    """{PROBLEM.question}"""\n')
    assert record["programs"][0] == f'def solution():\n    """{PROBLEM.question}"""\n    apples = 3 + 2\n    return apples'
    assert record["pred"] == "5"


def test_a_hostile_completion_is_refused_and_counted_wrong(local_backend, sandbox):
    backend = ScriptedBackend(["\n    import os\n    return os.system('true')"], local_backend.tokenizer)
    record = solve_one(get_method("pal"), PROBLEM, backend, load_prompt("pal_8shot"),
                       GenerationConfig(), sandbox=sandbox)
    assert record["sandbox"][0]["verdict"] == "refused" and record["pred"] == INVALID and not record["correct"]


def test_real_completion_runs_through_the_sandbox(local_backend, sandbox):
    problem = load_split("test", 1)[0]
    record = solve_one(get_method("pal"), problem, local_backend, load_prompt("pal_8shot"),
                       GenerationConfig(max_new_tokens=24), sandbox=sandbox)
    program, run = record["programs"][0], record["sandbox"][0]
    assert program.endswith(record["completions"][0]) and record["n_completion_tokens"][0] <= 24
    assert program.startswith("def solution():") and f'"""{problem.question}"""' in program
    # whatever the model wrote, the record is consistent: a value only when the program ran to the end, and the
    # pred is that value as an answer, else invalid
    assert run["verdict"] in {"ok", "refused", "error", "timeout", "memory", "killed"}
    assert (run["value"] is not None) == (run["verdict"] == "ok") and (run["error"] is None) == (run["verdict"] == "ok")
    assert record["pred"] == (number_answer(run["value"]) if run["verdict"] == "ok" else INVALID)
