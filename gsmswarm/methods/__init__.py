"""Methods by name. A method turns one problem into one record, given a backend and the run's settings."""
from importlib import import_module

from ..config import UserError

METHODS = {"cot": "gsmswarm.methods.cot"}  # name -> module with `solve(problem, backend, settings) -> dict`


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return import_module(METHODS[name])
