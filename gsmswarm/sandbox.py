"""Run a model-written program in a locked-down child process and return its value or a one-line error.

PAL's reference code `exec`s generated programs inside its own process with only a timeout: a program can
then read files, open sockets, fork, or exhaust memory. Here every program goes through two fences:

1. An AST check refuses, before anything runs: imports other than a few math modules, any attribute or name
   that starts with an underscore (the `__class__`/`__subclasses__`/`__globals__` escapes), and the builtins
   that reach outside (eval, exec, open, getattr, ...).
2. A fresh `python -I` child with resource limits set before the program is even parsed there: CPU seconds,
   address space, no file writes (RLIMIT_FSIZE 0), no new file descriptors (so no files, sockets or pipes),
   no processes; the program sees only a whitelist of builtins, and `print` writes to a bounded buffer. The
   parent enforces a wall-clock limit and kills the child's whole process group.

`run_program` never raises and never blocks longer than its wall-clock limit (plus process start-up).
"""
import ast
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

ALLOWED_MODULES = ("math", "fractions", "decimal", "statistics", "itertools", "datetime")
BANNED_NAMES = {"eval", "exec", "compile", "open", "input", "globals", "locals", "vars", "getattr", "setattr",
                "delattr", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
                "classmethod", "staticmethod", "property"}
SAFE_BUILTINS = ("abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
                 "int", "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round",
                 "set", "sorted", "str", "sum", "tuple", "zip", "ArithmeticError", "Exception", "ValueError",
                 "ZeroDivisionError", "TypeError", "IndexError", "KeyError", "True", "False", "None")
MAX_SOURCE_CHARS = 20_000


@dataclass(frozen=True)
class SandboxResult:
    verdict: str  # ok | refused | error | timeout | memory | killed
    value: Optional[str] = None  # the returned number as text (ok only)
    error: Optional[str] = None  # one line, for anything but ok

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def check_program(source: str) -> Optional[str]:
    """None if the program passes the static fence, else why not (one line)."""
    if len(source) > MAX_SOURCE_CHARS:
        return f"program longer than {MAX_SOURCE_CHARS} characters"
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return f"syntax error line {e.lineno}: {e.msg}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad = [n for n in names if n.split(".")[0] not in ALLOWED_MODULES or (node.__class__ is ast.ImportFrom
                                                                                 and node.level)]
            if bad:
                return f"line {node.lineno}: import of {bad[0]!r} is not allowed (allowed: {', '.join(ALLOWED_MODULES)})"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"line {node.lineno}: attribute {node.attr!r} is not allowed"
        elif isinstance(node, ast.Name) and (node.id.startswith("_") or node.id in BANNED_NAMES):
            return f"line {node.lineno}: name {node.id!r} is not allowed"
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.AsyncFunctionDef, ast.Await, ast.ClassDef)):
            return f"line {node.lineno}: {type(node).__name__} is not allowed"
    if not any(isinstance(n, ast.FunctionDef) and n.name == "solution" for n in tree.body):
        return "no top-level function solution()"
    return None


# Runs in the child: limits first, then the program with whitelisted builtins; one JSON line on fd 1.
_CHILD = r"""
import json, os, resource, sys
import math, fractions, decimal, statistics, itertools, datetime
cpu, mem, out_chars = (int(a) for a in sys.argv[1:4])
source = sys.stdin.read()
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
result = sys.stdout
modules = {m: sys.modules[m] for m in %(modules)r}
def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level or name.split(".")[0] not in modules:
        raise ImportError(f"import of {name!r} is not allowed")
    return modules[name.split(".")[0]]
printed = []
def bounded_print(*args, **kwargs):
    printed.append(" ".join(map(str, args)))
    if sum(map(len, printed)) > out_chars:
        raise RuntimeError("printed too much")
import builtins
safe = {n: getattr(builtins, n) for n in %(builtins)r}
safe.update(__import__=guarded_import, print=bounded_print, __build_class__=None)
try:
    scope = {"__builtins__": safe, "__name__": "pal"}
    exec(compile(source, "<program>", "exec"), scope)
    value = scope["solution"]()
    if isinstance(value, bool) or not isinstance(value, (int, float, fractions.Fraction, decimal.Decimal)):
        raise TypeError(f"solution() returned {type(value).__name__}, not a number")
    if isinstance(value, fractions.Fraction):
        value = value.numerator if value.denominator == 1 else float(value)
    reply = {"value": str(value)}
except MemoryError:
    reply = {"verdict": "memory", "error": "memory limit exceeded"}
except RecursionError:
    reply = {"error": "RecursionError: maximum recursion depth exceeded"}
except BaseException as e:
    reply = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
result.write(json.dumps(reply) + "\n")
result.flush()
os._exit(0)
""" % {"modules": ALLOWED_MODULES, "builtins": SAFE_BUILTINS}


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 256, max_print_chars: int = 10_000,
                static_check: bool = True) -> SandboxResult:
    """Check, then run `source` in a fresh limited child and call `solution()`. Never raises.
    `static_check=False` skips the AST fence, so tests can show that the process fence holds on its own."""
    reason = check_program(source) if static_check else None
    if reason:
        return SandboxResult("refused", error=reason)
    cpu = max(1, int(timeout_s))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CHILD, str(cpu), str(memory_mb << 20), str(max_print_chars)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}, cwd="/")
    except OSError as e:
        return SandboxResult("error", error=f"could not start the sandbox: {e}")
    try:
        out, _ = proc.communicate(source.encode(), timeout=timeout_s + 2)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return SandboxResult("timeout", error=f"wall-clock limit of {timeout_s:g} s exceeded")
    finally:
        _kill(proc)
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not out:
        return SandboxResult("timeout", error=f"CPU limit of {cpu} s exceeded")
    try:
        reply = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return SandboxResult("killed", error=f"the program died without a result (exit {proc.returncode})")
    if "value" in reply:
        return SandboxResult("ok", value=reply["value"])
    return SandboxResult(reply.get("verdict", "error"), error=reply["error"])


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
