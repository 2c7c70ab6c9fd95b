"""Prompt files: `prompts/<name>.txt` with named `{slots}`, filled by plain replacement.

A *chat* prompt file is a list of turns, each under a line `[system]`, `[user]` or `[assistant]`. It is rendered
once, at load, through the model's own chat template (`tokenizer.apply_chat_template`, the template the
converter keeps from the model file), slots intact and ending with the assistant's header, so a prompt never
hand-types a model's special tokens and another model gets its own format. A line `[exemplars]` between turns
marks where retrieved exemplars go as user/assistant turns of their own (`{exemplars}`, filled with
`Template.exemplar`); a plain prompt writes each exemplar as `Q: ...\\nA: ...` and a blank line.
"""
import functools
import hashlib
import re
from typing import List, Optional

from .config import REPO_DIR, UserError

PROMPT_DIR = REPO_DIR / "prompts"
_SLOT_RE = re.compile(r"\{([a-z_]+)\}")
_TURN_RE = re.compile(r"^\[(system|user|assistant|exemplars)\]$", re.MULTILINE)
_Q, _A = "\x00question\x00", "\x00answer\x00"  # stand-ins for one exemplar's texts while its turns are rendered
PLAIN_EXEMPLAR = f"Q: {_Q}\nA: {_A}\n\n"  # the exemplars' form in prompts/cot_8shot.txt
# A chat answer ends with the assistant's turn (the model's end-of-turn token), not at the plain frame's blank
# line, and is about three times longer than a terse 8-shot answer (293 tokens on average, zero-shot).
CHAT_GENERATION = {"stop": (), "max_new_tokens": 768}


class Template(str):
    """A prompt ready for `render`: the text with its slots, and how it writes one exemplar."""
    chat = False
    exemplar_form = PLAIN_EXEMPLAR

    def exemplar(self, question: str, answer: str) -> str:
        return self.exemplar_form.replace(_Q, question).replace(_A, answer)


def load_prompt(name: str, model: Optional[str] = None) -> Template:
    """The prompt file `name`; a chat prompt rendered through the chat template of the tokenizer in the folder
    `model` (UserError without one)."""
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise UserError(f"--prompt {name}: no file {path} (known: {known})")
    text = path.read_text(encoding="utf-8")
    text = text[:-1] if text.endswith("\n") else text  # the file's final newline is not part of the prompt
    if not _TURN_RE.match(text):
        return Template(text)
    tokenizer = _tokenizer(model) if model else None
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--prompt {name} is a chat prompt ({path}), and {model or 'no model'} has no chat template: "
                        f"use a plain prompt, or a model whose tokenizer has one")
    return _chat(_turns(text, path), tokenizer, path)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _turns(text: str, path) -> List[dict]:
    heads = list(_TURN_RE.finditer(text))
    turns = []
    for head, nxt in zip(heads, heads[1:] + [None]):
        content = text[head.end() + 1:nxt.start() - 1 if nxt else len(text)]
        turns.append({"role": head.group(1), "content": content})
    if not any(t["role"] == "user" for t in turns) or turns[-1]["role"] not in ("user", "exemplars"):
        raise UserError(f"{path}: a chat prompt needs a [user] turn and ends with one (the model answers it)")
    return turns


def _chat(turns: List[dict], tokenizer, path) -> Template:
    def render_turns(messages: List[dict], answer_next: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer_next)

    marks = [i for i, t in enumerate(turns) if t["role"] == "exemplars"]
    if not marks:
        template = Template(render_turns(turns, True))
    else:
        i = marks[0]
        head, tail = turns[:i], turns[i + 1:]
        if len(marks) > 1 or not head:
            raise UserError(f"{path}: [exemplars] goes once, after at least one turn (the system's)")
        before = render_turns(head, False)
        whole = render_turns(head + tail, True)
        pair = render_turns(head + [{"role": "user", "content": _Q}, {"role": "assistant", "content": _A}], False)
        if not (whole.startswith(before) and pair.startswith(before)):
            raise UserError(f"{path}: this model's chat template does not render turns one after another, so "
                            f"[exemplars] cannot be placed")
        template = Template(before + "{exemplars}" + whole[len(before):])
        template.exemplar_form = pair[len(before):]
    template.chat = True
    return template


def chat_generation(template: str, gen):
    """A chat prompt's generation settings: where `gen` keeps the plain frame's defaults (stop at a blank line,
    256 tokens), the chat defaults (`CHAT_GENERATION`) instead; a value the user set stays."""
    import dataclasses

    from .config import GenerationConfig

    if not getattr(template, "chat", False):
        return gen
    defaults = GenerationConfig()
    return dataclasses.replace(gen, **{k: v for k, v in CHAT_GENERATION.items() if getattr(gen, k) == getattr(defaults, k)})


def slots(template: str) -> set:
    return set(_SLOT_RE.findall(template))


def check_slots(template: str, name: str, wanted: set, filler: str, hint: str = "") -> None:
    """UserError unless the prompt file `name` has exactly the slots `filler` (a flag as typed) fills."""
    if slots(template) != wanted:
        raise UserError(f"--prompt {name} has slots {sorted(slots(template))}; {filler} fills {sorted(wanted)}{hint}")


def render(template: str, **values: str) -> str:
    """Fill every `{slot}`; a missing or unknown slot is an error, not a silently odd prompt."""
    if slots(template) != set(values):
        raise ValueError(f"prompt has slots {sorted(slots(template))}, got values for {sorted(values)}")
    return _SLOT_RE.sub(lambda m: values[m.group(1)], template)  # one pass: values are never re-scanned


def prompt_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]
