"""Methods by name. A method turns one problem into one record, given a backend and the run's settings."""
from importlib import import_module

from ..config import UserError

# name -> module with `solve(problem, backend, template, gen, **tools)`, a generator that yields `(prompt, gen)`
# requests, receives each request's completions and returns the record's fields (see gsmswarm.engine); `tools`
# come from the module's optional `setup(run_config)` (an index, say), made once per run. Self-consistency is
# chain-of-thought with sampled completions and a vote: same module, its own name so its runs are labelled as such.
METHODS = {"cot": "gsmswarm.methods.cot", "self_consistency": "gsmswarm.methods.cot",
           "rag": "gsmswarm.methods.rag", "pal": "gsmswarm.methods.pal",
           "calculator": "gsmswarm.methods.calculator"}
SAMPLING_METHODS = {"self_consistency"}  # need --samples k >= 2 and --temperature > 0


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return import_module(METHODS[name])
