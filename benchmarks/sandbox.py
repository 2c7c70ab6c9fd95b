"""What the program sandbox costs per call, and whether it changes any answer.

1. Latency: p50 / p95 of `--calls` calls of a trivial program, side by side in one invocation: the sandbox at
   `--before` (a fresh limited `python -I` per call, loaded from that commit's gsmswarm/sandbox.py), and this
   tree's sandbox with one long-lived worker (`bwrap`, the default, and `unsafe`). Each call is timed from the
   caller's side, start-up of the worker excluded (it is paid once per run; printed apart).
2. Agreement: every program in the committed PAL records (`--records`) run again through this tree's
   sandbox; the verdict and value are compared with what the records hold.

    .venv/bin/python benchmarks/sandbox.py
    .venv/bin/python benchmarks/sandbox.py --calls 500 --records method_results/pal/*.jsonl
"""
import argparse
import glob
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gsmswarm.sandbox import Sandbox  # noqa: E402

TRIVIAL = "def solution():\n    return 6 * 7\n"


def sandbox_at(commit: str):
    """The sandbox module as it was at `commit` (it imports nothing from the package)."""
    source = subprocess.run(["git", "show", f"{commit}:gsmswarm/sandbox.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "sandbox_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def latencies(call, n: int):
    out = []
    for _ in range(n):
        start = time.perf_counter()
        result = call(TRIVIAL)
        out.append((time.perf_counter() - start) * 1000)
        assert result.ok and result.value == "42", result
    return out


def row(name, ms, start_ms=None):
    q = statistics.quantiles(ms, n=20)
    start = f"{start_ms:9.1f}" if start_ms is not None else f"{'-':>9}"
    return f"{name:34} {len(ms):6} {statistics.median(ms):8.2f} {q[18]:8.2f} {max(ms):8.2f} {start}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per sandbox (default 200)")
    parser.add_argument("--before", default="614e363", help="commit of the sandbox before isolation")
    parser.add_argument("--records", nargs="*", default=sorted(glob.glob(str(REPO / "method_results/pal/*.jsonl"))),
                        help="PAL records whose programs are run again (default: the committed ones)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# sandbox cost per call, {args.calls} calls of a trivial program each, at {commit}")
    print(f"{'sandbox':34} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'start ms':>9}")
    before = sandbox_at(args.before)
    ms = {"before": latencies(before.run_program, args.calls)}
    print(row(f"before ({args.before}): process per call", ms["before"]))
    for kind in ("bwrap", "unsafe"):
        start = time.perf_counter()
        with Sandbox(kind) as box:
            start_ms = (time.perf_counter() - start) * 1000
            ms[kind] = latencies(box.run, args.calls)
        print(row(f"{kind}: one worker, fork per call", ms[kind], start_ms))
    print(f"p50 ratio bwrap / before: {statistics.median(ms['bwrap']) / statistics.median(ms['before']):.3f}")

    if args.records:
        print(f"\n# committed PAL programs run again through the bwrap sandbox at {commit}")
        with Sandbox("bwrap") as box:
            for path in args.records:
                records = [json.loads(line) for line in open(path) if line.strip()]
                pairs = [(program, run) for r in records for program, run in zip(r["programs"], r["sandbox"])]
                same, changed = 0, []
                for program, run in pairs:
                    now = box.run(program)
                    if (now.verdict, now.value) == (run["verdict"], run["value"]):
                        same += 1
                    else:
                        changed.append(f"  was {run['verdict']} {run['value']!r} ({run['error']}), now {now.verdict} "
                                       f"{now.value!r} ({now.error})")
                print(f"{Path(path).name}: {same}/{len(pairs)} programs give the recorded verdict and value")
                if changed:
                    print("\n".join(changed[:10]))


if __name__ == "__main__":
    main()
