"""What each run cost per problem, from its records: prompt tokens, generated tokens, calculator calls and agent
actions and `Action n:` the harness wrote (each a pause after which the prompt is encoded again), and seconds of
the machine that ran it. Nothing is rerun: the figures are the committed runs' own, so a run that spanned engine
versions or was paused mixes their speeds (its commits are listed).

    .venv/bin/python benchmarks/cost.py                                   # every run of the study model
    .venv/bin/python benchmarks/cost.py --runs 'agent__*' 'cot__local__*cot_8shot*' --dir method_results/dev
"""
import argparse
import fnmatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="method_results", help="results folder (<dir>/<method>/<run>.jsonl)")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--runs", nargs="+", default=["*"], metavar="GLOB", help="run names to include")
    args = parser.parse_args()
    from gsmswarm.report import markdown_table, run_records
    from gsmswarm.results import load_runs

    rows = [("run", "problems", "accuracy", "prompt tokens", "generated tokens", "pauses", "s/problem", "commits")]
    for run in load_runs(args.dir):
        if run["config"]["model"] != args.model or not any(fnmatch.fnmatch(run["run_id"], g) for g in args.runs):
            continue
        recs = run_records(run)
        if not recs:
            continue
        n = len(recs)
        pauses = sum(len(r.get("calculator_calls", [])) + sum((s["action"] != "finish") + bool(s.get("asked"))
                                                              for s in r.get("trace", [])) for r in recs)
        rows.append((run["run_id"], str(n), f"{sum(r['correct'] for r in recs) / n:.3f}",
                     f"{sum(r['n_prompt_tokens'] for r in recs) / n:.0f}",
                     f"{sum(sum(r['n_completion_tokens']) for r in recs) / n:.0f}", f"{pauses / n:.2f}",
                     f"{run['generation_s'] / n:.1f}", ", ".join(c[:7] for c in run["commits"])))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
