"""Command line: `python -m gsmswarm {run,study,select,parity,train-prompt,build-index,summarize,convert} --help`.

Generation is started here (`run` calls `gsmswarm.engine.run`); notebooks read what it writes. Flags map 1:1
onto the fields of `RunConfig` and `GenerationConfig` (`--max-new-tokens` is `max_new_tokens`); an unknown flag
is an error.
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
from typing import Optional, Sequence

from .backends import BackendError
from .config import GenerationConfig, RunConfig, TuningConfig, UserError


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


def _add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="local", metavar="SOURCE",
                        help="where GSM8K comes from: 'local' (the shipped files, no network), 'hub' (openai/gsm8k "
                             "from the Hugging Face hub, with HF_HUB_OFFLINE=0; cached in .cache/datasets) or a "
                             "folder holding a copy of that dataset's repository; hub and folder are checked against "
                             "the shipped files row by row, since problem ids are their line numbers "
                             "(default: 'local')")


def _build(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return cls(**values)


def parity(config: RunConfig, gen: GenerationConfig) -> int:
    """Greedy tokens through the swarm vs the local model on the first `limit` problems; 0 if all equal. Where
    they part, the local model's two best logits there: in float32 both sides compute alike and any difference
    is a fault; in 16-bit dtypes the servers' kernels round differently, and two logits within a step or two of
    the dtype's rounding (bfloat16: 0.125 near 20) are a tie that rounding tips either way, not a fault."""
    from .backends import open_backend
    from .convert import resolve_model
    from .data import load_split
    from .prompts import chat_generation, load_prompt, render

    if config.soft_prompt:
        raise UserError("--soft-prompt: parity compares the model's own greedy tokens, without a soft prompt")
    model_path = resolve_model(config.model)
    template = load_prompt(config.prompt, model_path)
    gen = chat_generation(template, gen)
    prompts = [render(template, question=p.question) for p in load_split(config.split, config.limit or 3)]
    with open_backend("local", model_path, (), None, device=config.device, dtype=config.dtype) as local:
        expected = [local.generate(p, gen)[0].token_ids for p in prompts]
        with open_backend("petals", model_path, config.initial_peers, config.dht_prefix, config.num_servers,
                          device=config.device, dtype=config.dtype) as swarm:
            swarm_tokens = [swarm.generate(p, gen)[0].token_ids for p in prompts]
        for i, (prompt, want, got) in enumerate(zip(prompts, expected, swarm_tokens)):
            print(f"prompt {i}: " + parity_line(want, got, local.tokenizer.decode,
                                                lambda prefix: _top_two(local, prompt, prefix)))
    mismatches = sum(got != want for want, got in zip(expected, swarm_tokens))
    print(f"parity: {len(prompts) - mismatches}/{len(prompts)} prompts identical")
    return 1 if mismatches else 0


def parity_line(want: list, got: list, decode, top_two) -> str:
    """How the swarm's greedy tokens (`got`) compare with the local model's (`want`); where they part inside both,
    each side's token and the local model's two best logits there (`top_two(prefix)`), the gap that says tie or
    fault."""
    from .metrics import first_difference

    first = first_difference(got, want)
    if got == want:
        return f"{len(got)} tokens, identical"
    if first == min(len(got), len(want)):
        return f"DIFFER (lengths {len(got)}/{len(want)}, one a prefix of the other)"
    top = top_two(want[:first])
    return (f"DIFFER (lengths {len(got)}/{len(want)}, first difference at token {first}: local "
            f"{decode(want[first:first + 1])!r}, swarm {decode(got[first:first + 1])!r}; the local model's two best "
            f"logits there {top[0]:.3f} / {top[1]:.3f}, gap {top[0] - top[1]:.3f})")


def _top_two(local, prompt: str, prefix) -> list:
    """The local model's two largest next-token logits after `prompt` and the generated `prefix` (transformers'
    own forward pass, one sequence)."""
    import torch

    ids = torch.tensor([local.tokenizer(prompt).input_ids + list(prefix)], device=local.device)
    with torch.inference_mode():
        return local.model(ids).logits[0, -1].float().topk(2).values.tolist()


def summarize(output_dir: str, markdown: Sequence[str] = ()) -> None:
    """Recompute every run's summary from its records; print the tables and, per model, the study's verdicts;
    write plots beside the runs; with `markdown`, rewrite those files' generated parts."""
    from .report import (comparison_table, format_table, generated_parts, maj_table, plot_differences, plot_forest,
                         plot_maj_curves, recompute, study_results, text_table)
    from .study import FAMILIES, comparison_rows, verdict_rows

    for name in markdown or ():
        if not Path(name).is_file():
            raise UserError(f"--markdown {name}: no such file")
    runs = recompute(output_dir)
    if not runs:
        raise UserError(f"--output-dir {output_dir}: no *.summary.json found")
    print(format_table(runs))
    if len(runs) > 1:
        print("\n" + comparison_table(runs))
    results = study_results(runs)
    for model, r in results.items():
        for name, f in r["families"].items():
            if f["comparisons"]:
                print(f"\nthe study, {model}, {FAMILIES[name].title} (p Holm-adjusted across these "
                      f"{len(f['comparisons'])} comparisons):")
                print(text_table(verdict_rows(f["claims"])) if f["claims"] else "no claim has all its arms run yet")
                print("".join(f"{line}\n" for line in f["pending"]), end="")
                print(text_table(comparison_rows(f["comparisons"])))
        if len(r["swarm"]) > 1:
            print(f"\nthe local runs against the same arms through the swarm, {model}:")
            print(text_table(r["swarm"]))
    plots = []
    if results:
        plots.append(Path(output_dir) / "accuracy.png")
        plot_forest({model: r["shown"] for model, r in results.items()}, plots[-1])
        if any(f["claims"] for r in results.values() for f in r["families"].values()):
            plots.append(Path(output_dir) / "differences.png")
            plot_differences(results, plots[-1])
    if any(r["maj_curve"] for r in runs):
        print("\n" + maj_table(runs))
        plots.append(Path(output_dir) / "maj_at_k.png")
        plot_maj_curves(runs, plots[-1])
    print("\nplots: " + (", ".join(map(str, plots)) or "none (no study arm run yet)"))
    texts = {name: generated_parts(Path(name).read_text(), name, results) for name in markdown or ()}
    for name, text in texts.items():  # each file checked before any is written
        Path(name).write_text(text)
        print(f"{name}: generated parts rewritten from the records")


def _run_trained(tag: str, label: str, config: RunConfig, gen: GenerationConfig, train: Optional[dict],
                 model: str) -> Optional[dict]:
    """Run one arm or candidate (resumable) and return its summary; or, where its soft prompt has not been trained
    to its last step yet, skip it with the command that trains (or resumes) it, and return None."""
    from .study import training_command
    from .tuning import unfinished

    if config.soft_prompt and (why := unfinished(config.soft_prompt)):
        print(f"[{tag}] skipped: {why}; train it with {training_command(train, model)}")
        return None
    from .engine import run

    print(f"[{tag}] {label}")
    return run(config, gen)


def study(arms: Sequence[str], family: Optional[str], common: dict, list_only: bool) -> None:
    """Run the study's arms in order (every arm an ordinary resumable run; all of them, or `family`'s, unless
    named); skip an arm whose soft prompt has not been trained to its last step yet, saying how to train it (a
    rerun of that command resumes)."""
    from .report import format_table
    from .results import records_path
    from .study import ARMS, FAMILIES, FAMILY_OF, arm_config

    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"study: no arm {', '.join(map(repr, unknown))} (arms: {', '.join(ARMS)})")
    if family and family not in FAMILIES:
        raise UserError(f"--family {family}: the families are {', '.join(FAMILIES)}")
    for arm in arms or (FAMILIES[family].arms if family else ARMS):
        config, gen = arm_config(arm, **common)
        if list_only:
            print(f"{FAMILY_OF[arm]:6} {arm:18} {ARMS[arm].label:26} {records_path(config, gen)}")
        elif summary := _run_trained(arm, ARMS[arm].label, config, gen, ARMS[arm].train, config.model):
            print(format_table([summary]))


def select(model: str, list_only: bool, markdown: Optional[str], only: Sequence[str] = ()) -> None:
    """The chat regime's dev selection: run the missing candidates (each resumable; of the `only` methods or
    variants where given) unless only a table is asked for, then print the table and the variant chosen per
    method; with `markdown`, rewrite that file's tables (one per model with candidates run)."""
    from .report import markdown_table, recompute, replace_generated, text_table
    from .results import read_records, records_path, run_name
    from .selection import (CANDIDATES, COMMON, MARKERS, METHODS, OUTPUT_DIR, RULE, candidate_config,
                            candidate_summaries, choose, selection_rows)

    if markdown and not Path(markdown).is_file():
        raise UserError(f"--markdown {markdown}: no such file")
    labels = {c.label for c in CANDIDATES}
    if any(m not in METHODS and m not in labels for m in only):
        raise UserError(f"--only {' '.join(only)}: the methods are {', '.join(repr(m) for m in METHODS)}, or name "
                        f"a variant as `select --list` shows it")
    if not (list_only or markdown):
        for c in CANDIDATES:
            if not only or c.method in only or c.label in only:
                _run_trained(c.method, c.label, *candidate_config(c, model=model), c.train, model)
    summaries = recompute(OUTPUT_DIR) if Path(OUTPUT_DIR).is_dir() else []
    found = candidate_summaries(summaries, model=model)
    if list_only:  # counted from the records: a run killed mid-way has no summary yet
        for c in CANDIDATES:
            config, gen = candidate_config(c, model=model)
            print(f"{c.method:12} {len(read_records(records_path(config, gen))):3}/{COMMON['limit']}  "
                  f"{c.label!r:64} {run_name(config, gen)}")
        return
    rows = selection_rows(found)
    print(text_table(rows))
    print("".join(f"chosen for {m}: {label}\n" for m, label in choose(found).items()) + f"rule: {RULE}")
    if markdown:  # every model's selection, this one's even if none of its candidates has run
        models = sorted({s["config"]["model"] for s in summaries} | {model})
        tables = [(m, candidate_summaries(summaries, model=m)) for m in models]
        text = "\n\n".join(f"**{m}**, {len(f)} of {len(CANDIDATES)} candidates run:\n\n"
                            + markdown_table(selection_rows(f)) for m, f in tables if f or m == model)
        Path(markdown).write_text(replace_generated(Path(markdown).read_text(), text, markdown, MARKERS))
        print(f"{markdown}: selection table rewritten from the records")


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag (tests parse the README's commands with it, without running them)."""
    parser = _Parser(prog="python -m gsmswarm", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_run = sub.add_parser("run", help="solve problems with a method, appending records (resumable)")
    p_par = sub.add_parser("parity", help="check that the swarm gives the local model's greedy tokens")
    for p in (p_run, p_par):
        _add_dataclass_flags(p, RunConfig)
        _add_dataclass_flags(p, GenerationConfig)
        _add_data_flag(p)
    p_study = sub.add_parser("study", help="run the study's arms (CoT, PT, RAG, PT+RAG, ...) in order, each resumable",
                             description="Run the study's arms in order, each an ordinary resumable run, with "
                                         "--backend local unless given; the flags below apply to every arm.")
    p_study.add_argument("arms", nargs="*", metavar="ARM", help="arms to run (default: all, in order; see --list)")
    p_study.add_argument("--list", action="store_true", help="print the arms and what each sets, run nothing")
    p_study.add_argument("--family", help="run only this family's arms: 'plain' (Q:/A: prompts, float32) or 'chat' "
                                          "(the model's chat template, bfloat16)")
    from .study import ARM_FIELDS

    for cls in (RunConfig, GenerationConfig):  # the flags common to every arm; the arms set the rest
        _add_dataclass_flags(p_study, cls, only=[f.name for f in dataclasses.fields(cls) if f.name not in ARM_FIELDS])
    _add_data_flag(p_study)
    backend = next(a for a in p_study._actions if a.dest == "backend")
    backend.help = backend.help.replace("(default: 'petals')", "(default for the study: 'local', the engine the long runs use)")
    p_sum = sub.add_parser("summarize", help="print a table of every run's summary in a results folder")
    p_sum.add_argument("--output-dir", default="method_results", help="folder written by `run`")
    p_sum.add_argument("--markdown", metavar="FILE", nargs="+", help="also rewrite the generated parts of each FILE "
                       "from the records: the study's tables (between '<!-- results: ... -->' and '<!-- results end "
                       "-->' lines, docs/results.md) and the answer per claim ('<!-- answer: ... -->', README.md)")
    p_sel = sub.add_parser("select", help="the chat regime's dev selection: run each method's prompt variants on "
                                          "200 dev problems (resumable) and print which one is strongest")
    p_sel.add_argument("--model", default="qwen2.5-coder-0.5b", help="model whose variants are selected")
    p_sel.add_argument("--list", action="store_true", help="print each candidate's run and how far it got; run nothing")
    p_sel.add_argument("--only", nargs="+", default=(), metavar="METHOD", help="run only these methods' candidates "
                       "('prompt only', RAG, agent, PT, 'deep PT') or these variants (their labels, as --list shows "
                       "them), e.g. the cheap part of a larger model's selection")
    p_sel.add_argument("--markdown", metavar="FILE", help="run nothing; rewrite the table part of FILE (between "
                       "its results markers), e.g. docs/chat_regime.md")
    p_tune = sub.add_parser("train-prompt", help="train a soft prompt on GSM8K train (resumable)")
    _add_dataclass_flags(p_tune, TuningConfig)
    _add_data_flag(p_tune)
    p_index = sub.add_parser("build-index", help="build (or check) the Chroma index of training problems for rag")
    _add_dataclass_flags(p_index, RunConfig, only=("embedder", "index_dir", "rebuild_index"))
    _add_data_flag(p_index)
    p_conv = sub.add_parser("convert", help="convert a named GGUF model once (verified by sha256); print its folder")
    p_conv.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m (embedded), or qwen2.5-coder-0.5b / -1.5b after `bash install.sh --model <name>`")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork swarm processes after tokenizing
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")  # Petals' per-call INFO lines would bury the table
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 4.34 on torch 2.13: noise only
    try:
        if hasattr(args, "data"):
            from .data import use_source

            use_source(args.data)
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
            summarize(args.output_dir, args.markdown)
            return 0
        if args.command == "select":
            select(args.model, args.list, args.markdown, args.only)
            return 0
        if args.command == "train-prompt":
            from .tuning import train

            print(f"soft prompt: {train(_build(TuningConfig, args))}")
            return 0
        if args.command == "study":
            names = {f.name for cls in (RunConfig, GenerationConfig) for f in dataclasses.fields(cls)}
            study(args.arms, args.family, {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
                              if k in names}, args.list)
            return 0
        config, gen = _build(RunConfig, args), _build(GenerationConfig, args)
        if args.command == "parity":
            return parity(config, gen)
        start = time.perf_counter()
        from .engine import run

        summary = run(config, gen)
        from .report import format_table
        from .results import records_path

        print(format_table([summary]))
        m = summary["metrics"]["answer"]
        print(f"{config.method} {config.split} n={m['n']} acc={m['accuracy']:.3f} invalid={m['invalid_rate']:.2f} "
              f"wall={time.perf_counter() - start:.0f}s -> {records_path(config, gen)}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BackendError as e:  # training through a swarm that keeps failing (an evaluation records its errors)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --list | head`: the reader left; Python's docs' idiom, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
