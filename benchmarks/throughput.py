"""Problems per hour and generated tokens/s of whole evaluation runs: the code before the engine vs the engine
(batch 1, and batched in fp32 and bf16), and optionally lm-evaluation-harness on the same problems.

Every configuration is one `python -m gsmswarm run` (or `lm_eval`) process, started one after another in this
invocation on the same problems, each timed from start to exit (model load included, the same for all) with
its own peak RSS. "before" is the CLI at `--before` (a git worktree of that commit, run with this venv), i.e.
one problem at a time in fp32. Completions are compared with the before run's, accuracy is counted from the
records.

    .venv/bin/python benchmarks/throughput.py --model qwen2.5-coder-0.5b --limit 64
    .venv/bin/python benchmarks/throughput.py --configs before,fp32:32,bfloat16:32 --method calculator --limit 16
    .venv/bin/python benchmarks/throughput.py --lm-eval float32:8,bfloat16:16   # installs lm-eval in .cache/
    .venv/bin/python benchmarks/throughput.py --backend petals --configs float32:1,float32:4 --limit 8
    .venv/bin/python benchmarks/throughput.py --configs local/bfloat16:1,petals/bfloat16:4 --limit 8  # swarm vs local
    .venv/bin/python benchmarks/throughput.py --configs b69cd65@bfloat16:32,bfloat16:32 --limit 32   # engine vs engine
    .venv/bin/python benchmarks/throughput.py --prompt cot_zeroshot --stop $'\nQ:' --max-new-tokens 320 ...  # long answers
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LM_EVAL_VENV = REPO / ".cache" / "bench" / "lm-eval-venv"
LM_EVAL = "lm-eval==0.4.13"


def timed(cmd, env=None, cwd=REPO) -> dict:
    """Run `cmd` to its end: wall seconds and the peak RSS of its largest process (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err[-3000:]}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024}


@contextlib.contextmanager
def worktree(out: Path, commit: str):
    """A git worktree of `commit` for the length of one run (None: this checkout, no worktree)."""
    if not commit:
        yield None
        return
    tree = out / f"tree-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), commit], cwd=REPO, check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)


def records(folder: Path) -> dict:
    out = {}
    for path in folder.glob("*/*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out[r["idx"]] = r
    return out


def gsmswarm_run(label, args, out: Path, pythonpath=None, batch_size=None, dtype=None, backend=None) -> dict:
    cmd = [sys.executable, "-m", "gsmswarm", "run", "--backend", backend or args.backend, "--method", args.method,
           "--model", args.model, "--limit", str(args.limit), "--output-dir", str(out / label)]
    cmd += [arg for flag in ("prompt", "max_new_tokens") if getattr(args, flag)
            for arg in (f"--{flag.replace('_', '-')}", str(getattr(args, flag)))]
    cmd += ["--stop", *args.stop] if args.stop else []
    if args.method == "self_consistency":
        cmd += ["--samples", str(args.samples), "--temperature", "0.7"]
    if batch_size:
        cmd += ["--batch-size", str(batch_size), "--dtype", dtype]
    env = {"PYTHONPATH": str(pythonpath), "GSMSWARM_CACHE": str(REPO / ".cache")} if pythonpath else None
    result = timed(cmd, env=env,
                   cwd=pythonpath or REPO)
    recs = records(out / label)
    assert len(recs) == args.limit, f"{label}: {len(recs)} records"
    return {**result, "records": recs}


def lm_eval_run(label, args, out: Path, dtype: str, batch_size: int) -> dict:
    """lm-evaluation-harness's HF backend on its gsm8k_cot task, pointed at the shipped data."""
    py = LM_EVAL_VENV / "bin" / "python"
    if not py.exists():
        print(f"installing {LM_EVAL} into {LM_EVAL_VENV} (a reference, not a project dependency)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LM_EVAL_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU wheel, before anything asks for torch
        subprocess.run([*pip, f"{LM_EVAL}", "transformers", "accelerate"], check=True)
    tasks = subprocess.run([str(py), "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    task_dir = out / "lm-eval-task"
    task_dir.mkdir(exist_ok=True)
    data = REPO / "grade_school_math" / "data"
    (task_dir / "gsm8k_cot_shipped.yaml").write_text(
        f"include: {tasks}/tasks/gsm8k/gsm8k-cot.yaml\ntask: gsm8k_cot_shipped\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    train: {data}/train.jsonl\n"
        f"    test: {data}/test.jsonl\n")
    from gsmswarm.convert import resolve_model

    result = timed([str(py), "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={resolve_model(args.model)},dtype={dtype}", "--tasks", "gsm8k_cot_shipped",
                    "--include_path", str(task_dir), "--limit", str(args.limit), "--batch_size", str(batch_size),
                    "--gen_kwargs", "max_gen_toks=256", "--device", "cpu", "--log_samples",
                    "--output_path", str(out / label)],
                   env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    samples = [json.loads(line) for p in (out / label).rglob("samples_*.jsonl") for line in p.read_text().splitlines()]
    # lm-eval's own strict-match grading ("The answer is N.")
    correct = int(sum(s["exact_match"] for s in samples if s.get("filter") == "strict-match")) if samples else None
    completions = {s["doc_id"]: s["resps"][0][0] for s in samples if s.get("filter") == "strict-match"}
    return {**result, "correct": correct, "completions": completions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--backend", default="local", help="local, or petals (a loopback swarm per run; the batch size "
                                                       "is then the number of requests in flight); a config may "
                                                       "name its own")
    p.add_argument("--method", default="cot", help="cot, calculator or self_consistency")
    p.add_argument("--samples", type=int, default=8, help="self_consistency: completions per problem")
    p.add_argument("--limit", type=int, default=64, help="first N test problems")
    p.add_argument("--prompt", help="prompt file for the engine's runs (default: the method's)")
    p.add_argument("--max-new-tokens", type=int, help="token limit for the engine's runs (default: the method's)")
    p.add_argument("--stop", nargs="+", help="stop strings for the engine's runs (default: the method's)")
    p.add_argument("--before", default="2113b37", help="commit whose CLI is the one-problem-at-a-time baseline")
    p.add_argument("--configs", default="before,float32:1,float32:32,bfloat16:32",
                   help="comma-separated: 'before', or [COMMIT@][BACKEND/]DTYPE:BATCH_SIZE for the engine (at "
                        "COMMIT: the engine of that commit, from a git worktree, run with this venv; BACKEND: "
                        "local or petals instead of --backend)")
    p.add_argument("--lm-eval", default="", help="comma-separated DTYPE:BATCH_SIZE runs of lm-eval (cot only)")
    args = p.parse_args()
    from gsmswarm.results import git_commit

    commit, rows = git_commit(), []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i, config in enumerate(args.configs.split(",")):
            print(f"running {config} ...", file=sys.stderr, flush=True)
            if config == "before":
                with worktree(out, args.before) as tree:
                    rows.append({"config": f"before ({args.before}), batch 1, float32",
                                 **gsmswarm_run("before", args, out, pythonpath=tree)})
            else:
                at, _, config = config.rpartition("@")
                backend, _, config = config.rpartition("/")
                dtype, batch = config.split(":")
                label = f"{backend or 'engine'}{' at ' + at if at else ''}, batch {batch}, {dtype}"
                with worktree(out, at) as tree:
                    run = gsmswarm_run(f"{i}-{at}-{dtype}-{batch}", args, out, pythonpath=tree, batch_size=int(batch),
                                       dtype=dtype, backend=backend)
                    rows.append({"config": label, **run})
        for config in filter(None, args.lm_eval.split(",")):
            print(f"running lm-eval {config} ...", file=sys.stderr, flush=True)
            dtype, batch = config.split(":")
            rows.append({"config": f"lm-eval {LM_EVAL.split('==')[1]} hf, batch {batch}, {dtype}",
                         **lm_eval_run(f"lm-eval-{dtype}-{batch}", args, out, dtype, int(batch))})
    base = rows[0]
    print(f"\n{args.method}, {args.model}, {args.backend} backend where a row names none, first {args.limit} test "
          f"problems, code at {commit}, {os.cpu_count()} cores; ratios against the first row\n")
    print("| configuration | wall s | problems/h | generated tokens/s | correct | same completions as row 1 "
          "| peak RSS MB | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "records" in r:
            recs = r["records"]
            tokens = sum(sum(x["n_completion_tokens"]) for x in recs.values())
            correct = sum(bool(x["correct"]) for x in recs.values())
            same = (sum(recs[i]["completions"] == base["records"][i]["completions"] for i in recs)
                    if "records" in base else "-")
            tps = f"{tokens / r['wall_s']:.1f}"
        else:
            correct, same, tps = r["correct"], "-", "-"
        print(f"| {r['config']} | {r['wall_s']:.0f} | {args.limit / r['wall_s'] * 3600:.0f} | {tps} | {correct} | "
              f"{same} | {r['peak_rss_mb']:.0f} | {base['wall_s'] / r['wall_s']:.2f}x |")


if __name__ == "__main__":
    main()
