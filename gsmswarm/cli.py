"""Command line: `python -m gsmswarm {run,parity,summarize,convert} --help`.

Generation happens here; notebooks read what it writes. Flags map 1:1 onto the fields of `RunConfig` and
`GenerationConfig` (`--max-new-tokens` is `max_new_tokens`); an unknown flag is an error.
"""
import argparse
import codecs
import dataclasses
import logging
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from .config import CACHE_DIR, GenerationConfig, RunConfig, UserError, as_dict

log = logging.getLogger("gsmswarm")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line rather than the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: Sequence[str] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = typing.get_args(f.type)[0] if typing.get_origin(f.type) in (typing.Union, tuple) else f.type
        text = f.metadata["help"]
        text += "" if "default" in text else f" (default: {f.default!r})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
        if typing.get_origin(f.type) is tuple:
            kw["nargs"] = "+"
        if kind is str and f.name == "stop":
            kind = lambda s: codecs.decode(s, "unicode_escape")  # noqa: E731 -- lets users type \n
        parser.add_argument(flag, type=kind, **kw)


def _build(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return cls(**values)


def run(config: RunConfig, gen: GenerationConfig) -> dict:
    """Solve every not-yet-solved problem of the split, appending records; return the run's summary."""
    from tqdm import tqdm

    from .backends import open_backend
    from .convert import resolve_model
    from .data import load_split
    from .methods import get_method
    from .prompts import load_prompt, prompt_hash
    from .results import ResultsWriter, git_commit, run_name

    method = get_method(config.method)
    template = load_prompt(config.prompt)
    try:
        model_path = resolve_model(config.model)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    problems = load_split(config.split, config.limit)
    name = run_name(config.method, config.backend, config.model, config.prompt, config.split, gen.n,
                    gen.temperature, gen.seed)
    path = Path(config.output_dir) / config.method / f"{name}.jsonl"
    base = {"run_id": name, "method": config.method, "backend": config.backend, "model": config.model,
            "prompt": config.prompt, "prompt_hash": prompt_hash(template), "gen": as_dict(gen),
            "commit": git_commit()}
    with ResultsWriter(path) as writer:
        todo = [p for p in problems if p.idx not in writer.done]
        if writer.done:
            print(f"resuming {path}: {len(problems) - len(todo)} of {len(problems)} problems already done",
                  file=sys.stderr)
        if todo:
            with open_backend(config.backend, model_path, config.initial_peers, config.dht_prefix,
                              config.num_servers, CACHE_DIR / "swarm" / name) as backend:
                for problem in tqdm(todo, desc=name, unit="problem", dynamic_ncols=True):
                    solved = method.solve(problem, backend, template, gen)
                    writer.write({**base, "idx": problem.idx, "question": problem.question, "gold": problem.gold,
                                  **solved, "error": None})
        records = [writer.done[p.idx] for p in problems]
    return summarize_run(path, records, config, gen)


def summarize_run(path: Path, records: List[dict], config: RunConfig, gen: GenerationConfig) -> dict:
    from .answers import FILTERS
    from .metrics import accuracy
    from .results import write_summary

    summary = {
        "run_id": path.stem, "config": {**as_dict(config), "gen": as_dict(gen)},
        "commit": records[-1]["commit"] if records else None,
        "prompt_hash": records[-1]["prompt_hash"] if records else None,
        "metrics": {name: accuracy(records, name) for name in ("answer", *FILTERS)},
        "n_completion_tokens": sum(sum(r["n_completion_tokens"]) for r in records),
        "generation_s": round(sum(r["latency_s"] for r in records), 1),
        "truncated_rate": sum(r["truncated"][0] for r in records) / len(records) if records else 0.0,
    }
    write_summary(path.with_suffix("").with_suffix(".summary.json"), summary)
    return summary


def format_table(summaries: List[dict]) -> str:
    """One line per run: accuracy with its 95% interval, both filters, invalid and truncated rates, speed."""
    rows = [("run", "n", "acc", "95% CI", "strict", "flexible", "invalid", "trunc", "s/problem")]
    for s in summaries:
        m = s["metrics"]["answer"]
        rows.append((s["run_id"], str(m["n"]), f"{m['accuracy']:.3f}", f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
                     f"{s['metrics']['strict']['accuracy']:.3f}", f"{s['metrics']['flexible']['accuracy']:.3f}",
                     f"{m['invalid_rate']:.2f}", f"{s['truncated_rate']:.2f}",
                     f"{s['generation_s'] / max(m['n'], 1):.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def parity(config: RunConfig, gen: GenerationConfig) -> int:
    """Greedy tokens through the swarm vs the local model on the first `limit` problems; 0 if all equal."""
    from .backends import open_backend
    from .convert import resolve_model
    from .data import load_split
    from .prompts import load_prompt, render

    model_path = resolve_model(config.model)
    prompts = [render(load_prompt(config.prompt), question=p.question)
               for p in load_split(config.split, config.limit or 3)]
    with open_backend("local", model_path, (), None) as local:
        expected = [local.generate(p, gen)[0].token_ids for p in prompts]
    mismatches = 0
    with open_backend("petals", model_path, config.initial_peers, config.dht_prefix, config.num_servers) as swarm:
        for i, (prompt, want) in enumerate(zip(prompts, expected)):
            got = swarm.generate(prompt, gen)[0].token_ids
            first = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), None)
            same = got == want
            mismatches += not same
            print(f"prompt {i}: {len(got)} tokens, " + ("identical" if same else
                  f"DIFFER (lengths {len(got)}/{len(want)}, first difference at token {first})"))
    print(f"parity: {len(prompts) - mismatches}/{len(prompts)} prompts identical")
    return 1 if mismatches else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _Parser(prog="python -m gsmswarm", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_run = sub.add_parser("run", help="solve problems with a method, appending records (resumable)")
    p_par = sub.add_parser("parity", help="check that the swarm gives the local model's greedy tokens")
    for p in (p_run, p_par):
        _add_dataclass_flags(p, RunConfig)
        _add_dataclass_flags(p, GenerationConfig)
    p_sum = sub.add_parser("summarize", help="print a table of every run's summary in a results folder")
    p_sum.add_argument("--output-dir", default="method_results", help="folder written by `run`")
    sub.add_parser("convert", help="convert the embedded GGUF model once and print its folder")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork swarm processes after tokenizing
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")  # Petals' per-call INFO lines would bury the table
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 4.34 on torch 2.13: noise only
    try:
        if args.command == "convert":
            from .convert import ensure_embedded_model

            print(ensure_embedded_model())
            return 0
        if args.command == "summarize":
            from .results import load_runs

            runs = load_runs(args.output_dir)
            if not runs:
                raise UserError(f"--output-dir {args.output_dir}: no *.summary.json found")
            print(format_table(runs))
            return 0
        config, gen = _build(RunConfig, args), _build(GenerationConfig, args)
        if args.command == "parity":
            return parity(config, gen)
        start = time.perf_counter()
        summary = run(config, gen)
        print(format_table([summary]))
        m = summary["metrics"]["answer"]
        print(f"{config.method} {config.split} n={m['n']} acc={m['accuracy']:.3f} invalid={m['invalid_rate']:.2f} "
              f"wall={time.perf_counter() - start:.0f}s -> {config.output_dir}/{config.method}/{summary['run_id']}.jsonl")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished problems are saved; rerun the same command to resume", file=sys.stderr)
        return 130
