"""Run model-written programs isolated by the operating system and return their value or a one-line error.

PAL's reference code `exec`s generated programs inside its own process; a program that reaches `os` can then
delete a week of results. Here the boundary is the operating system, and the program is assumed to run
arbitrary Python inside it:

1. **Isolation (bubblewrap).** One long-lived worker per `Sandbox` runs inside its own mount, pid, ipc, uts,
   cgroup and network namespaces and its own user namespace, as uid/gid 65534 with every capability dropped,
   no_new_privs, and no way to create further user namespaces. Its root file system is read-only and holds
   only /usr and the Python installation (no repository, no $HOME, no /etc); /tmp is empty and read-only. The
   network namespace is its own: the machine's loopback and every other interface are out of reach. The pid
   namespace shows the sandbox's processes only, so nothing outside can be signalled, and the whole namespace
   dies with the worker. As root, bubblewrap's user namespace would map uid 65534 back onto root outside,
   where the kernel does not enforce the process limit; so root first builds the namespaces, then drops to
   the real uid 65534 (util-linux `setpriv`), which then enters the user namespace (bubblewrap again).
2. **Resource limits, per program.** The worker forks a fresh child for each program; the child sets CPU
   seconds, address space, no file writes (RLIMIT_FSIZE 0), no new file descriptors, no processes, then
   runs the program. The worker enforces the wall-clock limit; the caller also bounds its wait on the worker
   and kills the whole namespace if the worker stops answering.
3. **A language check**, a convenience that gives most mistakes a clear message before anything runs:
   imports other than a few math modules (which arrive as their public functions and constants, never as
   module objects), underscore names, introspection attributes (`gi_frame`, `f_back`, ...), builtins that
   reach outside, and `str.format` fields that walk attributes.

Where bubblewrap is missing or user namespaces are disabled, a Sandbox refuses to start with a one-line
error; `Sandbox("unsafe")` (the `--sandbox unsafe` flag) runs the same worker with layers 2 and 3 only, and
runs record which sandbox they used.
"""
import ast
import atexit
import json
import os
import secrets
import selectors
import shutil
import signal
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from .config import UserError

SANDBOXES = ("bwrap", "unsafe")
ALLOWED_MODULES = ("math", "fractions", "decimal", "statistics", "itertools", "datetime")
BANNED_NAMES = {"eval", "exec", "compile", "open", "input", "globals", "locals", "vars", "getattr", "setattr",
                "delattr", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
                "classmethod", "staticmethod", "property", "format"}
# frame, generator, coroutine, code and traceback internals: the ways from a value back to a frame's globals
INSPECT_ATTRIBUTES = {"tb_frame", "tb_next", "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_trace",
                      "gi_frame", "gi_code", "gi_yieldfrom", "cr_await", "cr_frame", "cr_code", "cr_origin",
                      "ag_await", "ag_frame", "ag_code", "co_code", "mro"}
SAFE_BUILTINS = ("abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
                 "int", "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round",
                 "set", "sorted", "str", "sum", "tuple", "zip", "ArithmeticError", "Exception", "ValueError",
                 "ZeroDivisionError", "TypeError", "IndexError", "KeyError", "True", "False", "None")
MAX_SOURCE_CHARS = 20_000
NOBODY = 65534


@dataclass(frozen=True)
class SandboxResult:
    verdict: str  # ok | refused | error | timeout | memory | killed
    value: Optional[str] = None  # the returned number as text (ok only)
    error: Optional[str] = None  # one line, for anything but ok

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def check_program(source: str) -> Optional[str]:
    """None if the program passes the language check, else why not (one line)."""
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
        elif isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr in INSPECT_ATTRIBUTES):
            return f"line {node.lineno}: attribute {node.attr!r} is not allowed"
        elif isinstance(node, ast.Attribute) and node.attr in ("format", "format_map"):
            if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                return f"line {node.lineno}: .{node.attr} is allowed on a string literal only"
            fields = [f for _, f, _, _ in string.Formatter().parse(node.value.value) if f]
            if any("." in f or "[" in f for f in fields):
                return f"line {node.lineno}: format fields that reach into attributes or items are not allowed"
        elif isinstance(node, ast.Name) and (node.id.startswith("_") or node.id in BANNED_NAMES):
            return f"line {node.lineno}: name {node.id!r} is not allowed"
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.AsyncFunctionDef, ast.Await, ast.ClassDef)):
            return f"line {node.lineno}: {type(node).__name__} is not allowed"
    if not any(isinstance(n, ast.FunctionDef) and n.name == "solution" for n in tree.body):
        return "no top-level function solution()"
    return None


# The worker, inside the isolation: one JSON request per line on fd 0, one reply per line on fd 1. Each program
# runs in a forked child that keeps only /dev/null and its result pipe (fd 3), so it can neither read the
# requests nor write replies; the worker is not dumpable, so the child cannot ptrace it or open its fds
# through /proc. A reply carries the request's nonce: a program that writes lines of its own cannot pass them
# off as another program's result.
_WORKER = r"""
import ctypes, json, os, resource, select, signal, socket, subprocess, sys, time, types
import math, fractions, decimal, statistics, itertools, datetime, builtins
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
MODULES = %(modules)r
def public(module):  # the module's public functions and constants; never a module object
    return types.SimpleNamespace(**{n: getattr(module, n) for n in dir(module) if not n.startswith("_")
                                    and not isinstance(getattr(module, n), types.ModuleType)})
PUBLIC = {m: public(sys.modules[m]) for m in MODULES}
SAFE = {n: getattr(builtins, n) for n in %(builtins)r}

def fenced_scope(out_chars):
    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name.split(".")[0] not in PUBLIC:
            raise ImportError(f"import of {name!r} is not allowed")
        return PUBLIC[name.split(".")[0]]
    printed = []
    def bounded_print(*args, **kwargs):
        printed.append(" ".join(map(str, args)))
        if sum(map(len, printed)) > out_chars:
            raise RuntimeError("printed too much")
    return {"__builtins__": {**SAFE, "__import__": guarded_import, "print": bounded_print,
                             "__build_class__": None}, "__name__": "pal"}

def child(req, w):
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(w, 3)
    os.closerange(4, 1 << 16)
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu"], req["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (req["mem"], req["mem"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (4 + req["files"], 4 + req["files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        scope = (fenced_scope(req["out_chars"]) if req["fence"] else
                 {"__name__": "pal", "os": os, "socket": socket, "resource": resource, "signal": signal,
                  "subprocess": subprocess, "ctypes": ctypes, "time": time})
        exec(compile(req["source"], "<program>", "exec"), scope)
        value = scope["solution"]()
        if isinstance(value, bool) or not isinstance(value, (int, float, fractions.Fraction, decimal.Decimal)):
            raise TypeError(f"solution() returned {type(value).__name__}, not a number")
        if isinstance(value, fractions.Fraction):
            value = value.numerator if value.denominator == 1 else float(value)
        reply = {"verdict": "ok", "value": str(value)}
    except MemoryError:
        reply = {"verdict": "memory", "error": "memory limit exceeded"}
    except RecursionError:
        reply = {"verdict": "error", "error": "RecursionError: maximum recursion depth exceeded"}
    except BaseException as e:
        reply = {"verdict": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    os.write(3, json.dumps(reply).encode())
    os._exit(0)

def run(req):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            child(req, w)
        finally:
            os._exit(1)
    os.close(w)
    out, deadline = b"", time.monotonic() + req["timeout_s"]
    while len(out) < 1 << 16:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            break
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        out += chunk
    os.close(r)
    status = 0
    while time.monotonic() < deadline:  # its pipe is closed: it is exiting, or it closed fd 3 and lives on
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"verdict": "timeout", "error": f"wall-clock limit of {req['timeout_s']:g} s exceeded"}
    try:
        return json.loads(out)
    except ValueError:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            return {"verdict": "timeout", "error": f"CPU limit of {req['cpu']} s exceeded"}
        return {"verdict": "killed", "error": f"the program died without a result (status {status})"}

sys.stdout.write(json.dumps({"ready": True}) + "\n")
sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.write(json.dumps({**run(req), "nonce": req["nonce"]}) + "\n")
    sys.stdout.flush()
""" % {"modules": ALLOWED_MODULES, "builtins": SAFE_BUILTINS}


def _filesystem() -> List[str]:
    """bubblewrap arguments for a read-only root with /usr, the Python installation and nothing else."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        parents = [p for p in _parents(prefix) if p != "/"]
        for p in parents:  # made traversable for uid 65534 (a pyenv Python lives under /root, mode 0700)
            args += ["--perms", "0755", "--dir", p]
        args += ["--ro-bind", prefix, prefix]
    return args + ["--proc", "/proc", "--dev", "/dev", "--perms", "0555", "--tmpfs", "/tmp", "--chdir", "/",
                   "--clearenv", "--setenv", "PYTHONHASHSEED", "0", "--setenv", "PATH", "/usr/bin"]


def _parents(path: str) -> List[str]:
    out = []
    while (path := os.path.dirname(path)) not in ("/", ""):
        out.append(path)
    return out[::-1]


def isolation_command() -> List[str]:
    """The command that starts the isolated worker's interpreter; UserError (one line) when this machine cannot
    isolate it."""
    bwrap, setpriv, unshare = shutil.which("bwrap"), shutil.which("setpriv"), shutil.which("unshare")
    fix = ("or pass --sandbox unsafe to run model-written programs with the process limits only (they can then "
           "reach your files)")
    if sys.platform != "linux":
        raise UserError(f"the program sandbox needs Linux namespaces (bubblewrap); this is {sys.platform}: {fix}")
    if not bwrap:
        raise UserError(f"the program sandbox needs bubblewrap ('bwrap'), which is not installed: apt-get install "
                        f"bubblewrap (bash install.sh does it as root), {fix}")
    python = os.path.realpath(sys.executable)
    user_ns = [bwrap, "--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY),
               "--cap-drop", "ALL", "--die-with-parent"]
    if os.geteuid() != 0:
        return [*user_ns, "--unshare-all", "--new-session", *_filesystem(), "--", python, "-I", "-S"]
    if not (setpriv and unshare):
        raise UserError(f"the program sandbox as root needs util-linux 'setpriv' and 'unshare': {fix}")
    # root: namespaces and mounts as root (`unshare --net` leaves even loopback down), then the real uid 65534
    # without capabilities, which enters a user namespace of its own over the same read-only tree
    return [unshare, "--net", "--", bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", *_filesystem(), "--",
            setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--",
            *user_ns, "--dev-bind", "/", "/", "--remount-ro", "/", "--chdir", "/", "--", python, "-I", "-S"]


class Sandbox:
    """One isolated worker that runs many programs, each in a fresh child. Not thread-safe (one program at a
    time); restarts its worker when a program killed it or it stopped answering."""

    def __init__(self, kind: str = "bwrap"):
        if kind not in SANDBOXES:
            raise UserError(f"--sandbox must be one of {', '.join(SANDBOXES)}, got {kind!r}")
        self.kind = kind
        self.command = (isolation_command() if kind == "bwrap" else [os.path.realpath(sys.executable), "-I", "-S"])
        self.proc: Optional[subprocess.Popen] = None
        self._buffer = b""
        self._start()

    def _start(self) -> None:
        self.close()
        self.proc = subprocess.Popen([*self.command, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0, start_new_session=True, cwd="/",
                                     env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"})
        self._buffer = b""
        if self._read_reply(None, 30) is None:
            err = self.proc.stderr.read(4000).decode(errors="replace").strip().splitlines() if self.proc.poll() is not None else []
            self.close()
            raise UserError(f"the program sandbox ({self.kind}) did not start: {(err or ['no answer'])[-1]} "
                            f"(unsafe: --sandbox unsafe)")

    def _read_reply(self, nonce: Optional[str], timeout_s: float) -> Optional[dict]:
        """The worker's next line that answers `nonce` (or says ready), or None if it died or timed out."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    try:
                        reply = json.loads(line)
                    except ValueError:
                        continue
                    if reply.get("nonce") == nonce or (nonce is None and reply.get("ready")):
                        return reply
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk

    def run(self, source: str, timeout_s: float = 5.0, memory_mb: int = 256, max_print_chars: int = 10_000,
            static_check: bool = True, language_fence: bool = True, open_files: int = 0) -> SandboxResult:
        """Check, then run `source` in a fresh child and call `solution()`. Never raises. `static_check=False`
        skips the language check and `language_fence=False` gives the program the real builtins plus `os`,
        `socket`, `resource`, `signal`, `subprocess` and `ctypes`, and `open_files` lets it open that many files
        or sockets (0: none): tests use all three to show that the isolation holds on its own."""
        reason = check_program(source) if static_check else None
        if reason:
            return SandboxResult("refused", error=reason)
        if self.proc is None or self.proc.poll() is not None:
            try:
                self._start()
            except UserError as e:
                return SandboxResult("error", error=str(e))
        nonce = secrets.token_hex(16)
        request = {"source": source, "cpu": max(1, int(timeout_s)), "mem": memory_mb << 20,
                   "out_chars": max_print_chars, "timeout_s": timeout_s, "fence": language_fence, "files": open_files, "nonce": nonce}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
        except (BrokenPipeError, OSError):
            self.close()
            return SandboxResult("killed", error="the sandbox worker was gone; it restarts for the next program")
        reply = self._read_reply(nonce, timeout_s + 5)
        if reply is None:  # the program killed its worker, or the worker hung: the whole namespace goes
            self.close()
            return SandboxResult("killed", error="the sandbox worker stopped answering; it restarts for the next "
                                                 "program")
        return SandboxResult(reply["verdict"], value=reply.get("value"), error=reply.get("error"))

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_shared: Optional[Sandbox] = None


def run_program(source: str, **limits) -> SandboxResult:
    """`Sandbox.run` on a process-wide isolated sandbox, started on first use; UserError if this machine
    cannot isolate programs (see `isolation_command`)."""
    global _shared
    if _shared is None:
        _shared = Sandbox("bwrap")
        atexit.register(_shared.close)
    return _shared.run(source, **limits)
