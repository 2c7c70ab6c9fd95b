"""Methods by name. A method turns one problem into one record, given a backend and the run's settings."""
from importlib import import_module

from ..config import UserError

# name -> module. A method module declares everything that is its own, so adding a method is one module, its
# prompt file and a test:
#   PROMPT                     the default prompt file (prompts/<PROMPT>.txt), hashed into every record
#   RECORD_FIELDS              optional: the fields it adds to the record (results.RECORD_FIELDS: the rest)
#   SLOTS                      the slots it fills in a prompt; another prompt must have exactly these
#   solve(problem, backend, template, gen, **tools)
#                              a generator that yields `(prompt, gen)` requests, receives each request's
#                              completions and returns the record's fields (see gsmswarm.engine)
#   setup(run_config) -> dict  optional: the `tools` made once per run (an index, a sandbox; closed after it
#                              if they have `close`)
#   run_settings(run_config)   optional: record fields that define the run besides prompt and generation
#                              settings (a resumed run must match them), and its run-name tag `run_tag(config)`
# Self-consistency is chain-of-thought with sampled completions and a vote: the same module under its own name,
# so that its runs are labelled as such.
METHODS = {"cot": "gsmswarm.methods.cot", "self_consistency": "gsmswarm.methods.cot",
           "rag": "gsmswarm.methods.rag", "pal": "gsmswarm.methods.pal",
           "calculator": "gsmswarm.methods.calculator", "agent": "gsmswarm.methods.agent"}
SAMPLING_METHODS = {"self_consistency"}  # need --samples k >= 2 and --temperature > 0


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"--method {name}: no such method (methods: {', '.join(sorted(METHODS))})")
    return import_module(METHODS[name])
