"""Every flag of every command, given a bad value, answers with one line on stderr that names the flag, and exit
code 2, before any model, swarm or index is loaded. A new flag without a bad value here fails the test. Each case
runs in an empty folder: a value that slipped through must not write beside the committed runs (one did, into
method_results/, before the checks this test asked for existed)."""
import argparse

import pytest

from gsmswarm import cli
from gsmswarm.config import REPO_DIR

A_FILE = str(REPO_DIR / "README.md")  # a folder flag given a file

# one bad value per flag; a flag whose every value is valid (a free-form name) maps to None
BAD = {
    "--backend": "gpu", "--model": "/nope", "--initial-peers": "localhost:1", "--dht-prefix": "a.b",
    "--num-servers": "0", "--device": "tpu", "--dtype": "int4", "--method": "magic", "--prompt": "nope",
    "--soft-prompt": "/nope", "--split": "val", "--limit": "0", "--output-dir": A_FILE, "--rag-k": "0", "--search-k": "0", "--max-steps": "0", "--family": "nope", "--only": "nope",
    "--rag-order": "random", "--embedder": "/nope", "--index-dir": A_FILE, "--batch-size": "0",
    "--sandbox": "docker", "--max-new-tokens": "0", "--temperature": "-1", "--top-p": "2", "--top-k": "-1",
    "--samples": "0", "--seed": "x", "--stop": "", "--tuning-mode": "x", "--num-virtual-tokens": "0",
    "--init-text": "", "--context": "x", "--target": "x", "--steps": "0", "--lr": "0", "--max-length": "0", "--eval-every": "0",
    "--micro-batch-size": "0", "--dev-limit": "0", "--name": "../x", "--markdown": "/nope.md", "--data": "/nope",
}
BAD_FOR = {("summarize", "--output-dir"): "/nope", ("convert", "--model"): "nope"}  # where the shared value is fine
EXTRA = {"--embedder": ["--method", "rag"], "--index-dir": ["--method", "rag"]}  # flags only rag reads


class Reached(BaseException):
    """Raised where a bad value would have got as far as loading a model, a swarm or an index."""


def cases():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or action.nargs == 0:  # positionals, --help and on/off switches
                continue
            typed = action.option_strings[-1]  # the user's spelling: --samples rather than --n
            yield command, typed


@pytest.mark.parametrize("command,flag", list(cases()), ids=lambda x: x)
def test_a_bad_value_is_one_line_naming_the_flag(command, flag, monkeypatch, capsys, tmp_path):
    import gsmswarm.backends
    import gsmswarm.retrieval
    import gsmswarm.swarm

    def reached(*a, **k):
        raise Reached(f"{command} {flag}: the bad value got as far as loading")

    for module, name in ((gsmswarm.backends, "load_backend"), (gsmswarm.swarm, "LoopbackSwarm"),
                         (gsmswarm.retrieval, "embedding_function")):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, reached)
    monkeypatch.chdir(tmp_path)  # default output folders are relative: nothing lands in the repository
    assert flag in BAD or (command, flag) in BAD_FOR, f"{command} {flag}: add a bad value to BAD"
    value = BAD_FOR.get((command, flag), BAD.get(flag))
    argv = [command, flag, value, *(EXTRA.get(flag, []) if command in ("run", "parity") else [])]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own checks (a number that is not one)
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, f"{' '.join(argv)}: exit {code}, stderr {err}"
    assert flag in err[0] or "--" + flag.lstrip("-") in err[0], f"{' '.join(argv)}: {err[0]}"


def test_the_contract_layer_imports_nothing_above_it():
    """config.py holds every flag and what each may name; every other module reads it, so it imports none of
    them (no import circle runs through the configs)."""
    import ast

    from gsmswarm.config import REPO_DIR

    tree = ast.parse((REPO_DIR / "gsmswarm" / "config.py").read_text())
    inner = [n.module for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("gsmswarm"))]
    assert inner == []
