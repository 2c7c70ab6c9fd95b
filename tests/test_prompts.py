import re

import pytest

from gsmswarm.config import GenerationConfig
from gsmswarm.data import load_split
from gsmswarm.config import UserError
from gsmswarm.prompts import PROMPT_DIR, chat_generation, load_prompt, prompt_hash, render, slots

PROMPTS = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
CHAT_PROMPTS = [n for n in PROMPTS if n.startswith("chat_")]


@pytest.fixture(scope="module")
def embedded():
    """The embedded model's folder: its tokenizer's chat template renders the chat prompts (no weights loaded)."""
    from gsmswarm.convert import ensure_model

    return str(ensure_model())


@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_renders_with_its_slots(name, embedded):
    template = load_prompt(name, embedded)
    assert "question" in slots(template)
    filled = render(template, **{s: "What is 1 + 1?" for s in slots(template)})
    assert "{question}" not in filled and "What is 1 + 1?" in filled


@pytest.mark.parametrize("name", [n for n in PROMPTS if "shot" in n and "zero" not in n and n not in CHAT_PROMPTS])
def test_exemplar_separator_is_the_stop_string(name):
    template = load_prompt(name)
    separator = "\n\n\n\n" if name.startswith("pal") else GenerationConfig().stop[0]  # programs have blank lines
    exemplars = template.split(separator)
    if name.startswith("agent"):  # the actions are described first
        exemplars = exemplars[1:]
    assert len(exemplars) == 9  # 8 exemplars + the question slot
    question, answer, end = {"pal": ("Q: ", "\ndef solution():\n", "\n    return "),
                             "agent": ("Question: ", "\nThought 1: ", "\nAction "),
                             }.get(name.split("_")[0], ("Q: ", "\nA: ", "."))
    assert all(e.startswith(question) and answer in e for e in exemplars[:-1])
    assert all(separator not in e for e in exemplars[:-1])
    assert all(end in e if end.startswith("\n") else e.rstrip().endswith(end) for e in exemplars[:-1])
    if name.startswith("agent"):
        assert all(re.search(r"\nAction \d: finish\[\d+\]$", e) for e in exemplars[:-1])


def test_exemplars_are_not_test_questions():
    template = load_prompt("cot_8shot")
    assert not any(p.question in template for p in load_split("test"))


def test_render_fills_in_one_pass():
    assert render("Q: {question}\nA:", question="use {question} literally") == "Q: use {question} literally\nA:"
    with pytest.raises(ValueError):
        render("Q: {question}", question="x", shots="y")
    template = load_prompt("cot_8shot")
    assert prompt_hash(template) == prompt_hash("".join(template))  # content only, not identity
    assert prompt_hash(template + " ") != prompt_hash(template)  # one changed character is another prompt


def _apply(embedded, messages):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded).apply_chat_template(messages, tokenize=False,
                                                                      add_generation_prompt=True)


def test_a_chat_prompt_is_the_models_own_chat_template(embedded):
    """Filled, a chat prompt is exactly what the tokenizer's chat template makes of its turns: no hand-typed tokens."""
    question = "What is {1 + 1}?"
    got = render(load_prompt("chat_zeroshot", embedded), question=question)
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert got == _apply(embedded, [{"role": "user", "content": f"{question}\n{instruction}"}])
    few = load_prompt("chat_8shot", embedded)
    assert few.count("The answer is") == 8 and render(few, question=question).endswith(
        _apply(embedded, [{"role": "user", "content": question}]).split(question)[-1])


def test_exemplars_as_turns_equal_the_whole_conversation_rendered(embedded):
    template = load_prompt("chat_rag_turns", embedded)
    pairs = [("Q1?", "A1. The answer is 1."), ("Q2?", "A2. The answer is 2.")]
    got = render(template, exemplars="".join(template.exemplar(q, a) for q, a in pairs), question="Q3?")
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    turns = [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    assert got == _apply(embedded, [{"role": "system", "content": system}, *turns, {"role": "user", "content": "Q3?"}])
    assert load_prompt("rag_cot").exemplar("Q1?", "A1.") == "Q: Q1?\nA: A1.\n\n"  # plain prompts: cot_8shot's form


def test_a_chat_prompt_without_a_chat_template_is_one_line(embedded, tmp_path):
    with pytest.raises(UserError, match=r"^--prompt chat_zeroshot is a chat prompt .* has no chat template"):
        load_prompt("chat_zeroshot")


def test_chat_generation_ends_at_the_turn_unless_the_user_said_otherwise(embedded):
    chat, plain = load_prompt("chat_zeroshot", embedded), load_prompt("cot_8shot")
    assert chat_generation(plain, GenerationConfig()) == GenerationConfig()
    assert chat_generation(chat, GenerationConfig()) == GenerationConfig(stop=(), max_new_tokens=768)
    mine = GenerationConfig(stop=("STOP",), max_new_tokens=100)
    assert chat_generation(chat, mine) == mine
