"""Prompt files: `prompts/<name>.txt` with named `{slots}`, filled by plain replacement."""
import hashlib
import re

from .config import REPO_DIR, UserError

PROMPT_DIR = REPO_DIR / "prompts"
_SLOT_RE = re.compile(r"\{([a-z_]+)\}")


def load_prompt(name: str) -> str:
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise UserError(f"--prompt {name}: no file {path} (known: {known})")
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text  # the file's final newline is not part of the prompt


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
