"""Command line: `python -m gsmswarm {run,parity,train-prompt,build-index,summarize,convert} --help`.

Generation happens here; notebooks read what it writes. Flags map 1:1 onto the fields of `RunConfig` and
`GenerationConfig` (`--max-new-tokens` is `max_new_tokens`); an unknown flag is an error.
"""
import argparse
import codecs
import dataclasses
import json
import logging
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .config import CACHE_DIR, GenerationConfig, RunConfig, TuningConfig, UserError, as_dict


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line rather than the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, only: Sequence[str] = ()) -> None:
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
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
        flags = [flag, *f.metadata.get("aliases", ())]
        if kind is bool:
            parser.add_argument(*flags, action="store_true", **kw)
        else:
            parser.add_argument(*flags, type=kind, **kw)


def _build(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return cls(**values)


MAX_ERRORS_IN_A_ROW = 3


def run(config: RunConfig, gen: GenerationConfig) -> dict:
    """Solve every not-yet-solved problem of the split, appending records; return the run's summary."""
    from tqdm import tqdm

    from .backends import BackendError, open_backend
    from .convert import resolve_model
    from .data import load_split
    from .methods import SAMPLING_METHODS, get_method
    from .prompts import load_prompt, prompt_hash, slots
    from .report import summarize_run
    from .results import ResultsWriter, git_commit, run_name

    method = get_method(config.method)
    if config.method in SAMPLING_METHODS and gen.n < 2:
        raise UserError(f"--method {config.method} needs --samples k >= 2 (and --temperature > 0)")
    template = load_prompt(config.prompt)
    wanted = {"exemplars", "question"} if config.method == "rag" else {"question"}
    if slots(template) != wanted:
        raise UserError(f"--prompt {config.prompt} has slots {sorted(slots(template))}; --method {config.method} "
                        f"fills {sorted(wanted)} (rag: use rag_cot)")
    try:
        model_path = resolve_model(config.model)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    problems = load_split(config.split, config.limit)
    soft_prompt = None
    if config.soft_prompt:
        from .tuning import load_soft_prompt

        soft_prompt = load_soft_prompt(config.soft_prompt)
    name = run_name(config, gen)
    path = Path(config.output_dir) / config.method / f"{name}.jsonl"
    base = {"run_id": name, "method": config.method, "backend": config.backend, "model": config.model,
            "prompt": config.prompt, "prompt_hash": prompt_hash(template), "gen": as_dict(gen),
            "split": config.split, "commit": git_commit(),
            "soft_prompt": soft_prompt and {"path": config.soft_prompt, "mode": soft_prompt.mode,
                                            "length": soft_prompt.length, "sha256": soft_prompt.sha256()},
            "rag": ({"k": config.rag_k, "order": config.rag_order, "embedder": config.embedder}
                    if config.method == "rag" else None)}
    summary = None
    with ResultsWriter(path) as writer:
        def failed(p) -> bool:
            return bool(writer.done[p.idx].get("error"))

        todo = [p for p in problems if p.idx not in writer.done or (config.retry_errors and failed(p))]
        if writer.done:
            _check_same_config(path, next(iter(writer.done.values())), base)
            print(f"resuming {path}: {len(problems) - len(todo)} of {len(problems)} problems already done",
                  file=sys.stderr)
        try:
            if todo:
                tools = method.setup(config) if hasattr(method, "setup") else {}
                with open_backend(config.backend, model_path, config.initial_peers, config.dht_prefix,
                                  config.num_servers, CACHE_DIR / "swarm" / name) as backend:
                    if soft_prompt is not None:
                        backend.set_soft_prompt(soft_prompt)
                    in_a_row = 0  # consecutive backend errors: a few mean the swarm, not the problem, is broken
                    for problem in tqdm(todo, desc=name, unit="problem", dynamic_ncols=True):
                        record = {**base, "idx": problem.idx, "question": problem.question, "gold": problem.gold}
                        try:
                            writer.write({**record, **method.solve(problem, backend, template, gen, **tools),
                                          "error": None})
                            in_a_row = 0
                        except BackendError as e:
                            writer.write({**record, "error": f"backend_error: {e}"})
                            in_a_row += 1
                            if in_a_row == MAX_ERRORS_IN_A_ROW:
                                n_failed = sum(failed(p) for p in problems if p.idx in writer.done)
                                raise UserError(
                                    f"problem {problem.idx}: {e}; {in_a_row} problems in a row failed, so the run "
                                    f"stops; {path} keeps {len(writer.done)} records ({n_failed} of them backend "
                                    f"errors): rerun with --retry-errors to resume and retry those") from None
        finally:  # an interrupted run still gets a summary of what it finished
            records = [writer.done[p.idx] for p in problems if p.idx in writer.done]
            if records:
                summary = summarize_run(path, records, {**as_dict(config), "gen": as_dict(gen)})
    if summary and summary["n_backend_errors"]:
        print(f"{summary['n_backend_errors']} problems are recorded as backend errors (not graded): rerun with "
              f"--retry-errors to solve them again", file=sys.stderr)
    return summary


def _check_same_config(path: Path, old: dict, base: dict) -> None:
    """Resuming appends to a run only if the prompt and generation settings are the ones it was made with."""
    for key in ("prompt_hash", "gen", "soft_prompt", "rag"):
        if old.get(key) != json.loads(json.dumps(base[key])):
            raise UserError(f"{path} was made with another {key} ({old.get(key)}); "
                            f"use another --output-dir or move that file")


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


def summarize(output_dir: str) -> None:
    """Recompute every run's summary from its records; print the tables; write plots beside the runs."""
    from .report import (comparison_table, format_table, maj_table, plot_accuracy, plot_maj_curves, run_path,
                         summarize_run)
    from .results import load_runs, read_records

    runs = load_runs(output_dir)
    if not runs:
        raise UserError(f"--output-dir {output_dir}: no *.summary.json found")
    runs = [{**summarize_run(run_path(r), read_records(run_path(r)), r["config"]),
             "path": r["path"]} for r in runs]
    print(format_table(runs))
    if len(runs) > 1:
        print("\n" + comparison_table(runs))
    plots = [Path(output_dir) / "accuracy.png"]
    plot_accuracy(runs, plots[0])
    if any(r["maj_curve"] for r in runs):
        print("\n" + maj_table(runs))
        plots.append(Path(output_dir) / "maj_at_k.png")
        plot_maj_curves(runs, plots[1])
    print("\nplots: " + ", ".join(map(str, plots)))


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
    p_tune = sub.add_parser("train-prompt", help="train a soft prompt on GSM8K train (resumable)")
    _add_dataclass_flags(p_tune, TuningConfig)
    p_index = sub.add_parser("build-index", help="build (or check) the Chroma index of training problems for rag")
    _add_dataclass_flags(p_index, RunConfig, only=("embedder", "index_dir", "rebuild_index"))
    p_conv = sub.add_parser("convert", help="convert a named GGUF model once (verified by sha256); print its folder")
    p_conv.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m (embedded), or qwen2.5-coder-0.5b / -1.5b after `bash install.sh --model <name>`")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork swarm processes after tokenizing
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")  # Petals' per-call INFO lines would bury the table
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 4.34 on torch 2.13: noise only
    try:
        if args.command == "convert":
            from .convert import MODELS, ensure_model

            if args.model not in MODELS:
                raise UserError(f"--model {args.model}: convert knows {', '.join(MODELS)}")
            print(ensure_model(args.model))
            return 0
        if args.command == "build-index":
            from .retrieval import open_index

            config = _build(RunConfig, args)
            index = open_index(config.embedder, config.index_dir, config.rebuild_index)
            print(f"index: {len(index)} training problems in {index.store_dir}")
            return 0
        if args.command == "summarize":
            summarize(args.output_dir)
            return 0
        if args.command == "train-prompt":
            from .tuning import train

            print(f"soft prompt: {train(_build(TuningConfig, args))}")
            return 0
        config, gen = _build(RunConfig, args), _build(GenerationConfig, args)
        if args.command == "parity":
            return parity(config, gen)
        start = time.perf_counter()
        summary = run(config, gen)
        from .report import format_table

        print(format_table([summary]))
        m = summary["metrics"]["answer"]
        print(f"{config.method} {config.split} n={m['n']} acc={m['accuracy']:.3f} invalid={m['invalid_rate']:.2f} "
              f"wall={time.perf_counter() - start:.0f}s -> "
              f"{config.output_dir}/{config.method}/{summary['run_id']}.jsonl")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
