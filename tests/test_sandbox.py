"""The PAL sandbox: benign programs give right values; hostile ones end refused or with a clean error inside
their limits, and neither the test process nor the machine is touched. Hostile programs run twice where it
matters: through both fences, and with the static check skipped, so the process fence is tested alone."""
import os
import time
from pathlib import Path

import pytest

from gsmswarm.sandbox import run_program

MARK = Path("/tmp/gsmswarm-sandbox-was-here")


@pytest.fixture(autouse=True)
def no_mark():
    MARK.unlink(missing_ok=True)
    yield
    assert not MARK.exists(), "a sandboxed program wrote a file"


@pytest.mark.parametrize("body, value", [
    ("return 2 + 3", "5"),
    ("eggs = 16 - 3 - 4\n    return eggs * 2", "18"),
    ("import math\n    return math.floor(math.sqrt(17))", "4"),
    ("from fractions import Fraction\n    return Fraction(3, 4) * 8", "6"),
    ("from decimal import Decimal\n    return Decimal('1.10') + Decimal('2.20')", "3.30"),
    ("import statistics\n    return statistics.mean([2, 4, 9])", "5"),
    ("import itertools\n    return len(list(itertools.combinations(range(5), 2)))", "10"),
    ("return sum(x * x for x in range(4)) / 2", "7.0"),
    ("print('thinking'); return round(10 / 3, 2)", "3.33"),
])
def test_benign_programs_return_their_value(body, value):
    result = run_program(f"def solution():\n    {body}\n")
    assert result.ok and result.value == value, result


HOSTILE = {  # name: (program, verdicts allowed with both fences, verdicts allowed with the process fence alone)
    "read /etc/passwd": ("def solution():\n    return len(open('/etc/passwd').read())", "refused", "error"),
    "write a file": (f"def solution():\n    open('{MARK}', 'w').write('x')\n    return 1", "refused", "error"),
    "import os": ("import os\ndef solution():\n    return os.getpid()", "refused", "error"),
    "os.system": ("import os\ndef solution():\n    return os.system('touch " + str(MARK) + "')", "refused", "error"),
    "subprocess": ("import subprocess\ndef solution():\n    return subprocess.call(['true'])", "refused", "error"),
    "socket": ("import socket\ndef solution():\n    socket.create_connection(('127.0.0.1', 22))\n    return 1",
               "refused", "error"),
    "__import__": ("def solution():\n    return __import__('os').getpid()", "refused", "error"),
    "__builtins__": ("def solution():\n    return __builtins__['open']('/etc/passwd')", "refused", "error"),
    "__subclasses__": ("def solution():\n    return len(().__class__.__bases__[0].__subclasses__())", "refused",
                       "ok"),  # walking the type graph is harmless alone; what it could reach is fenced below
    "__globals__ escape": ("def solution():\n    return solution.__globals__['__builtins__']['open']('/etc/passwd')",
                           "refused", "error"),
    "eval of a string": ("def solution():\n    return eval('1+1')", "refused", "error"),
    "exec of a string": ("def solution():\n    exec('x=1')\n    return 1", "refused", "error"),
    "compile": ("def solution():\n    return compile('1', 'f', 'eval')", "refused", "error"),
    "getattr escape": ("def solution():\n    return getattr(1, '__class__')", "refused", "error"),
    "type() metaclass": ("def solution():\n    return type('X', (), {})", "refused", "error"),
    "relative import": ("from . import x\ndef solution():\n    return 1", "refused", "error"),
    "import sys": ("import sys\ndef solution():\n    return sys.maxsize", "refused", "error"),
    "import builtins": ("import builtins\ndef solution():\n    return builtins.open('/etc/passwd')", "refused", "error"),
    "importlib": ("import importlib\ndef solution():\n    return importlib.import_module('os')", "refused", "error"),
    "ctypes": ("import ctypes\ndef solution():\n    return ctypes.CDLL(None)", "refused", "error"),
    "class definition": ("class A:\n    pass\ndef solution():\n    return 1", "refused", "error"),
    "infinite loop": ("def solution():\n    while True:\n        pass", "timeout", "timeout"),
    "memory bomb": ("def solution():\n    x = [0] * 10 ** 10\n    return 1", "memory", "memory"),
    "growing memory": ("def solution():\n    x = []\n    while True:\n        x.append('y' * 10 ** 6)", "memory",
                       "memory"),
    "huge integer power": ("def solution():\n    return 10 ** 10 ** 9", "timeout", "timeout"),
    "huge integer to text": ("def solution():\n    return int('9' * 5000)", "error", "error"),
    "deep recursion": ("def solution():\n    return solution() + 1", "error", "error"),
    "print gigabytes": ("def solution():\n    while True:\n        print('x' * 10 ** 6)", "error", "error"),
    "fork bomb": ("import os\ndef solution():\n    while True:\n        os.fork()", "refused", "error"),
    "no solution()": ("x = 1", "refused", "error"),
    "returns a string": ("def solution():\n    return 'rm -rf /'", "error", "error"),
    "syntax error": ("def solution(:\n    return 1", "refused", "error"),
    "sleep via time": ("import time\ndef solution():\n    time.sleep(60)\n    return 1", "refused", "error"),
    "datetime is allowed but harmless": ("import datetime\ndef solution():\n    return datetime.date(2024, 3, 1).day",
                                         "ok", "ok"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_programs_end_cleanly_within_limits(name):
    source, fenced, process_only = HOSTILE[name]
    for static_check, allowed in ((True, fenced), (False, process_only)):
        start = time.monotonic()
        result = run_program(source, timeout_s=2, memory_mb=256, static_check=static_check)
        elapsed = time.monotonic() - start
        assert result.verdict == allowed, (static_check, result)
        assert elapsed < 10, f"{name} took {elapsed:.1f} s"
        assert result.ok or (result.error and "\n" not in result.error)


def test_the_test_process_is_unharmed():
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        run_program("def solution():\n    while True:\n        pass", timeout_s=1)
    assert set(os.listdir("/proc/self/fd")) == before  # no leaked pipes
    assert run_program("def solution():\n    return 1").value == "1"
