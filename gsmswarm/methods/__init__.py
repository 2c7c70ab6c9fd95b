"""Methods by name. A method turns one problem into one record, given a backend and the run's settings."""
from importlib import import_module

from ..config import METHODS, check_method

# A method module declares everything that is its own, so adding a method is one module, its prompt file, its
# line in config.METHODS (name, module, default prompt) and a test:
#   RECORD_FIELDS              optional: the fields it adds to the record (results.RECORD_FIELDS: the rest)
#   SLOTS                      the slots it fills in a prompt; another prompt must have exactly these
#   solve(problem, backend, template, gen, **tools)
#                              a generator that yields `(prompt, gen)` requests, receives each request's
#                              completions and returns the record's fields (see gsmswarm.engine)
#   setup(run_config) -> dict  optional: the `tools` made once per run (an index, a sandbox; closed after it
#                              if they have `close`)
#   run_settings(run_config)   optional: record fields that define the run besides prompt and generation
#                              settings (a resumed run must match them), and its run-name tag `run_tag(config)`
SAMPLING_METHODS = {"self_consistency"}  # need --samples k >= 2 and --temperature > 0


def get_method(name: str):
    check_method(name)
    return import_module(METHODS[name][0])
