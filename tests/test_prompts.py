import pytest

from gsmswarm.config import GenerationConfig
from gsmswarm.data import load_split
from gsmswarm.prompts import PROMPT_DIR, load_prompt, prompt_hash, render, slots

PROMPTS = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_renders_with_its_slots(name):
    template = load_prompt(name)
    assert "question" in slots(template)
    filled = render(template, **{s: "What is 1 + 1?" for s in slots(template)})
    assert "{question}" not in filled and "What is 1 + 1?" in filled


@pytest.mark.parametrize("name", [n for n in PROMPTS if "shot" in n and "zero" not in n])
def test_exemplar_separator_is_the_stop_string(name):
    template = load_prompt(name)
    separator = "\n\n\n\n" if name.startswith("pal") else GenerationConfig().stop[0]  # programs have blank lines
    exemplars = template.split(separator)
    assert len(exemplars) == 9  # 8 exemplars + the question slot
    answer = "\ndef solution():\n" if name.startswith("pal") else "\nA: "
    assert all(e.startswith("Q: ") and answer in e for e in exemplars[:-1])
    assert all(separator not in e for e in exemplars[:-1])
    assert all("\n    return " in e if name.startswith("pal") else e.rstrip().endswith(".") for e in exemplars[:-1])


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
