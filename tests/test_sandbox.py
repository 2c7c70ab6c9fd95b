"""The PAL sandbox. Benign programs give right values; hostile ones end refused or with a clean one-line verdict
inside their limits. Three sets of programs:

- HOSTILE, through the full stack (language check, language fence, process limits, isolation) and again with
  the language check skipped;
- OS_FENCE, programs *given* real `os`, `socket`, `resource`, `ctypes` and the builtins, with both language
  fences off and room to open files: each tries to touch something outside (files, the repository, listeners
  on this machine's loopback, other processes, its own limits) and the test checks from outside that nothing
  changed, so the operating system's isolation is tested on its own;
- the language fence's own rules (module objects, introspection attributes, format strings).
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import sandbox_processes
from gsmswarm.config import REPO_DIR, UserError
from gsmswarm.sandbox import Sandbox, check_program, run_program

MARK = Path("/tmp/gsmswarm-sandbox-was-here")


@pytest.fixture(autouse=True)
def no_mark():
    MARK.unlink(missing_ok=True)
    yield
    assert not MARK.exists(), "a sandboxed program wrote a file"


def test_bubblewrap_is_installed_by_the_install_step():
    assert shutil.which("bwrap"), "bash install.sh installs bubblewrap (apt-get) where it can"


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
    ("return int('{} and {}'.format(4, 2).split()[0])", "4"),  # format on a literal without attribute fields
])
def test_benign_programs_return_their_value(sandbox, body, value):
    result = sandbox.run(f"def solution():\n    {body}\n")
    assert result.ok and result.value == value, result


HOSTILE = {  # name: (program, verdict through the full stack, verdict with the language check skipped)
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
    "a module's module attribute": ("import statistics\ndef solution():\n    return statistics.sys.maxsize", "error",
                                    "error"),  # the found way in: modules reached through allowed modules
    "a module's os through two hops": ("import fractions\ndef solution():\n    return fractions.sys.modules['os']"
                                       ".getpid()", "error", "error"),
    "generator frame globals": ("def solution():\n    g = (x for x in [1])\n    return g.gi_frame.f_globals['x']",
                                "refused", "error"),
    "format walks attributes": ("def solution():\n    g = (x for x in [1])\n    return '{0.gi_frame}'.format(g)",
                                "refused", "error"),
    "infinite loop": ("def solution():\n    while True:\n        pass", "timeout", "timeout"),
    "memory bomb": ("def solution():\n    x = [0] * 10 ** 10\n    return 1", "memory", "memory"),
    "growing memory": ("def solution():\n    x = []\n    while True:\n        x.append('y' * 10 ** 7)", "memory",
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
    source, fenced, unchecked = HOSTILE[name]
    for static_check, allowed in ((True, fenced), (False, unchecked)):
        start = time.monotonic()
        result = run_program(source, timeout_s=2, memory_mb=256, static_check=static_check)
        elapsed = time.monotonic() - start
        assert result.verdict == allowed, (static_check, result)
        assert elapsed < 10, f"{name} took {elapsed:.1f} s"
        assert result.ok or (result.error and "\n" not in result.error)


class Outside:
    """What lies outside the sandbox: files, listeners on 127.0.0.1, a process; `intact()` checks each."""

    def __init__(self, tmp: Path):
        self.victims = [tmp / "victim.txt", REPO_DIR / ".cache" / "sandbox-victim.txt"]
        for v in self.victims:
            v.parent.mkdir(parents=True, exist_ok=True)
            v.write_text("precious")
            v.chmod(0o644)
        self.stats = [(v.stat().st_mode, v.stat().st_mtime) for v in self.victims]
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.unix_name = f"\0gsmswarm-sandbox-test-{os.getpid()}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_name)
        self.unix.listen()
        self.unix.setblocking(False)
        self.helper = subprocess.Popen(["sleep", "600"])
        self.names = {"victim": str(self.victims[0]), "repo_victim": str(self.victims[1]),
                      "repo": str(REPO_DIR), "home": pwd.getpwuid(os.getuid()).pw_dir,
                      "tcp_port": self.tcp.getsockname()[1], "udp_port": self.udp.getsockname()[1],
                      "unix_name": self.unix_name, "test_pid": os.getpid(), "helper_pid": self.helper.pid,
                      "mark": str(MARK)}

    def intact(self) -> None:
        for v, (mode, mtime) in zip(self.victims, self.stats):
            assert v.read_text() == "precious" and (v.stat().st_mode, v.stat().st_mtime) == (mode, mtime), v
            assert sorted(p.name for p in v.parent.glob(v.name + "*")) == [v.name], v
        assert not (REPO_DIR / ".cache" / "sandbox-dir").exists()
        for listener in (self.tcp, self.unix):
            with pytest.raises(BlockingIOError):
                listener.accept()
        with pytest.raises(BlockingIOError):
            self.udp.recv(16)
        assert self.helper.poll() is None, "the helper process outside was killed"

    def close(self):
        self.helper.kill()
        self.helper.wait()
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        for v in self.victims:
            v.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    o = Outside(tmp_path_factory.mktemp("outside"))
    yield o
    o.close()


BLOCKED = "ok"  # the attempt raised OSError or ValueError inside the program, which then returned 0
OS_FENCE = {  # name: (statements that try it, the verdict wanted); {names} come from Outside
    "unlink a file outside": ("os.unlink({victim!r})", BLOCKED),
    "unlink a file in the repository": ("os.unlink({repo_victim!r})", BLOCKED),
    "rename a file outside": ("os.rename({victim!r}, {victim!r} + '.moved')", BLOCKED),
    "truncate a file outside": ("os.truncate({victim!r}, 0)", BLOCKED),
    "chmod a file outside": ("os.chmod({victim!r}, 0)", BLOCKED),
    "touch a file's times": ("os.utime({victim!r}, (0, 0))", BLOCKED),
    "symlink beside a file": ("os.symlink('/x', {victim!r} + '.link')", BLOCKED),
    "write beside a file": ("open({victim!r} + '.new', 'w').write('x')", BLOCKED),
    "write /tmp as seen outside": ("open({mark!r}, 'w').write('x')", BLOCKED),
    "mkdir in the repository": ("os.mkdir({repo!r} + '/.cache/sandbox-dir')", BLOCKED),
    "write the root file system": ("open('/evil', 'w').write('x')", BLOCKED),
    "write /usr": ("open('/usr/evil', 'w').write('x')", BLOCKED),
    "read /etc/passwd": ("open('/etc/passwd').read()", BLOCKED),
    "read the repository": ("open({repo!r} + '/README.md').read()", BLOCKED),
    "list $HOME": ("if set(os.listdir({home!r})) - {{'.pyenv'}}:\n            return 1\n        raise OSError",
                   BLOCKED),  # at most the path down to the Python installation, bound read-only
    "connect to a listener on 127.0.0.1": ("socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1)",
                                           BLOCKED),
    "send a datagram to 127.0.0.1": ("socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                                     "('127.0.0.1', {udp_port}))", BLOCKED),
    "connect to an abstract unix socket": ("socket.socket(socket.AF_UNIX).connect({unix_name!r})", BLOCKED),
    "reach the internet": ("socket.create_connection(('1.1.1.1', 53), timeout=1)", BLOCKED),
    "resolve a name": ("socket.getaddrinfo('example.com', 80)", BLOCKED),
    "kill the test process": ("os.kill({test_pid}, signal.SIGKILL)", BLOCKED),
    "kill a process outside": ("os.kill({helper_pid}, signal.SIGKILL)", BLOCKED),
    "kill the namespace's init": ("os.kill(1, signal.SIGKILL)", BLOCKED),
    "kill every process it can": ("os.kill(-1, signal.SIGKILL)", "killed"),  # its own worker only
    "raise the open-files limit": ("resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 16, 1 << 16))", BLOCKED),
    "raise the file-size limit, then write": (
        "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "        open({mark!r}, 'w').write('x')", BLOCKED),
    "raise the process limit, then fork": ("resource.setrlimit(resource.RLIMIT_NPROC, (100, 100))\n"
                                           "        os.fork()", BLOCKED),
    "fork": ("os.fork()", BLOCKED),
    "fork past the process limit": ("n = 0\n        for _ in range(200):\n            try:\n"
                                    "                n += os.fork() > 0\n            except OSError:\n"
                                    "                pass\n        if n:\n            return 1\n        raise OSError", BLOCKED),
    "run a shell": ("subprocess.run(['/bin/sh', '-c', 'touch {mark}'])", BLOCKED),
    "exec a binary": ("os.execv('/usr/bin/touch', ['touch', {mark!r}])", "killed"),  # replaced, no result
    "ptrace its worker": ("if ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0) == 0:\n            return 1\n"
                          "        raise OSError", BLOCKED),
    "read its worker's pipes": ("open(f'/proc/{{os.getppid()}}/fd/0').read()", BLOCKED),
    "mount a file system": ("if ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0:\n"
                            "            return 1\n        raise OSError", BLOCKED),
    "create a user namespace": ("if ctypes.CDLL(None).unshare(0x10000000) == 0:\n            return 1\n"
                                "        raise OSError", BLOCKED),
    "chroot": ("os.chroot('/tmp')", BLOCKED),
    "become root": ("os.setuid(0)", BLOCKED),
    "write a kernel setting": ("open('/proc/sys/kernel/hostname', 'w').write('x')", BLOCKED),
    "read a disk": ("open('/dev/sda', 'rb').read(1)", BLOCKED),
    "ignore the CPU signal and sleep": ("signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n        time.sleep(60)",
                                        "timeout"),
    "leave the process group and spin": ("os.setsid()\n        while True:\n            pass", "timeout"),
}


@pytest.mark.parametrize("name", OS_FENCE)
def test_the_os_fence_holds_on_its_own(sandbox, outside, name):
    attack, wanted = OS_FENCE[name]
    source = (f"def solution():\n    try:\n        {attack.format(**outside.names)}\n"
              f"    except (OSError, ValueError):\n        return 0\n    return 1\n")
    start = time.monotonic()
    result = sandbox.run(source, timeout_s=2, static_check=False, language_fence=False, open_files=16)
    assert time.monotonic() - start < 2 + 6, result
    assert result.verdict == wanted and (result.value == "0" if wanted == "ok" else result.error), result
    assert result.ok or "\n" not in result.error
    outside.intact()
    assert sandbox.run("def solution():\n    return 1").value == "1"  # and the next program runs


def test_what_the_program_sees():
    source = ("def solution():\n    assert os.getuid() == 65534 and os.getgid() == 65534\n"
              "    assert open('/proc/self/status').read().split('CapEff:')[1].split()[0] == '0' * 16\n"
              "    assert sorted(p for p in os.listdir('/proc') if p.isdigit()) <= ['1', '2', '3', '4', '5']\n"
              "    assert not os.path.exists('/etc') and not os.path.exists('/work')\n"
              "    assert socket.if_nameindex() in ([], [(1, 'lo')])\n"
              "    return len(os.listdir('/tmp'))\n")
    with Sandbox() as box:
        result = box.run(source, static_check=False, language_fence=False, open_files=16)
    assert result.ok and result.value == "0", result


def test_missing_isolation_is_one_line_naming_the_fix(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    with pytest.raises(UserError, match="apt-get install bubblewrap.*--sandbox unsafe"):
        Sandbox()
    with Sandbox("unsafe") as box:  # the explicit way out: the process limits only
        assert box.kind == "unsafe" and box.run("def solution():\n    return 3").value == "3"


def test_a_closed_sandbox_leaves_no_process():
    before = sandbox_processes()
    with Sandbox() as box:
        assert box.run("def solution():\n    return 1").ok
        assert len(sandbox_processes()) > len(before)
    deadline = time.monotonic() + 5
    while sandbox_processes() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == before


def test_the_test_process_is_unharmed(sandbox):
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        sandbox.run("def solution():\n    while True:\n        pass", timeout_s=1)
    assert set(os.listdir("/proc/self/fd")) == before  # no leaked pipes
    assert sandbox.run("def solution():\n    return 1").value == "1"
    assert signal.getsignal(signal.SIGINT) is not None


@pytest.mark.parametrize("source, reason", [
    ("def solution():\n    g = (x for x in [1])\n    return g.gi_frame", "gi_frame"),
    ("def solution():\n    return (1).mro", "mro"),
    ("def solution():\n    s = '{}'\n    return s.format(1)", "string literal only"),
    ("def solution():\n    return '{0[0]}'.format([1])", "format fields"),
    ("def solution():\n    return format(1, 'x')", "format"),
])
def test_language_check_refuses_introspection_and_format_walks(source, reason):
    assert reason in (check_program(source) or ""), check_program(source)
