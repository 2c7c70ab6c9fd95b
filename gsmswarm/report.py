"""Summaries, tables and plots of runs: what `summarize`, the notebooks and the README show.

A run's summary is recomputed from its records (never edited by hand) and saved beside them as
`<run>.summary.json` with the resolved config, so every figure can say how it was made.
"""
from pathlib import Path
from typing import Dict, List, Tuple

from .answers import FILTERS
from .config import RunConfig, UserError
from .taxonomy import taxonomy
from .metrics import accuracy, maj_curve, paired
from .results import dtype_of, graded, load_runs, read_records, write_json
from .convert import MODELS
from .study import (ALPHA, ARMS, FAMILIES, claim_difference, comparison_rows, find_arms, model_rows, pending_claims,
                    seed_rows, shown_arms, swarm_rows, verdict_rows, verdicts)

# Generated parts of markdown files, written by `python -m gsmswarm summarize --markdown FILE` and checked
# against the records by tests/test_study.py, so no table or figure in prose can drift from the data: the
# study's tables (docs/results.md) and the answer per claim (README.md).
MARKERS = ("<!-- results: generated from method_results/ by `python -m gsmswarm summarize --markdown docs/results.md` -->",
           "<!-- results end -->")
ANSWER_MARKERS = ("<!-- answer: generated from method_results/ by `python -m gsmswarm summarize --markdown README.md` -->",
                  "<!-- answer end -->")


def summarize_run(path: Path, records: List[dict], config: dict, save: bool = True) -> dict:
    """Aggregates of one run: accuracy per filter, maj@k (sampled runs), error taxonomy, tokens, time.
    Scores count graded records only: a backend error is neither right nor wrong, so it is reported apart
    (`n_backend_errors`, and in the taxonomy) instead of lowering the accuracy."""
    answered = graded(records)
    n_samples = min((len(r["completions"]) for r in answered), default=0)
    summary = {
        "run_id": path.stem, "config": config,
        "commits": sorted({r["commit"] for r in records}),  # a resumed run may span commits
        "prompt_hash": records[-1]["prompt_hash"] if records else None,
        "n_samples": n_samples,
        # the text filters only where the method reads its answer from text (a PAL answer is a program's value)
        "metrics": {name: accuracy(answered, name) for name in ("answer", *FILTERS)
                    if name == "answer" or all(name in r["preds"] for r in answered)},
        "n_backend_errors": len(records) - len(answered),
        "maj_curve": maj_curve(answered) if n_samples > 1 else None,
        "taxonomy": taxonomy(records),
        "n_completion_tokens": sum(sum(r["n_completion_tokens"]) for r in answered),
        # wall time of the engine's loop (records since the engine carry it); before, problems ran one at a time
        "generation_s": round(sum(r.get("wall_s", r["latency_s"]) for r in answered), 1),
        "truncated_rate": (sum(sum(r["truncated"]) for r in answered) / sum(len(r["truncated"]) for r in answered)
                           if answered else 0.0),
    }
    if save:
        write_json(path.with_name(path.stem + ".summary.json"), summary)  # not with_suffix: "t0.7" has a dot
    return summary


def recompute(output_dir: str, save: bool = True) -> List[dict]:
    """Every run's summary under `output_dir`, recomputed from its records (and saved beside them)."""
    return [{**summarize_run(run_path(r), read_records(run_path(r)), r["config"], save=save), "path": r["path"]}
            for r in load_runs(output_dir)]


def text_table(rows: List[tuple]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _ci(m: Dict[str, float]) -> str:
    return f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def format_table(summaries: List[dict]) -> str:
    """One line per run: accuracy with its 95% interval, each filter's, invalid and truncated rates, speed, and
    the problems recorded as backend errors (not graded)."""
    rows = [("run", "n", "acc", "95% CI", "strict", "boxed", "flexible", "invalid", "trunc", "s/problem", "errors")]
    for s in summaries:
        m = s["metrics"]["answer"]
        rows.append((s["run_id"], str(m["n"]), f"{m['accuracy']:.3f}", _ci(m),
                     *(f"{s['metrics'][f]['accuracy']:.3f}" if f in s["metrics"] else "-" for f in FILTERS),
                     f"{m['invalid_rate']:.2f}", f"{s['truncated_rate']:.2f}",
                     f"{s['generation_s'] / max(m['n'], 1):.1f}", str(s.get("n_backend_errors", 0))))
    return text_table(rows)


def markdown_table(rows: List[tuple]) -> str:
    """A header row and body rows (as `text_table` takes them) as a GitHub markdown table."""
    head, *body = rows
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in body])


def _commits(summary: dict) -> str:
    return ", ".join(f"`{c[:7]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in summary["commits"])


def study_results(summaries: List[dict]) -> Dict[str, dict]:
    """The study per model, computed once for the terminal, the README and the forest plot: the arms shown
    (each arm's local run, or its run through the swarm where only that exists), per family from the local runs
    every comparison, the verdict per claim and what is still to run, and how the local runs agree with the same
    arms through the swarm."""
    out = {}
    for model in sorted({s["config"]["model"] for s in summaries}):
        shown = shown_arms(summaries, model)
        if not shown:
            continue
        local = {arm: run_records(s) for arm, s in find_arms(summaries, model).items()}
        swarm = {arm: run_records(s) for arm, s in find_arms(summaries, model, backend="petals").items()}
        families = {}
        for name, family in FAMILIES.items():
            if not any(arm in shown for arm in family.arms):
                continue
            records = {arm: r for arm, r in local.items() if arm in family.arms}
            comparisons, claims = verdicts(records, name)
            families[name] = {"comparisons": comparisons, "claims": claims, "seeds": seed_rows(records, name),
                              "pending": pending_claims(claims, records, family=name)}
        out[model] = {"shown": shown, "families": families, "swarm": swarm_rows(local, swarm),
                      "records": {arm: local[arm] if arm in local else swarm[arm] for arm in shown}}
    return out


def study_markdown(results: Dict[str, dict]) -> str:
    """`study_results` as docs/results.md shows it: per model and family the arms table (with each run's
    generation hours from its records: the engine's wall time, or the problems' latencies where they ran one at
    a time); where a claim can be judged, the verdicts and every comparison; the soft prompts' spread across
    training seeds; the swarm agreement."""
    parts = []
    for model, r in results.items():
        for name, f in r["families"].items():
            family = FAMILIES[name]
            rows = [("arm", "backend", "test problems", "correct", "accuracy [95% CI]", "hours", "commits")]
            for arm, s in r["shown"].items():
                if arm in family.arms:
                    m = s["metrics"]["answer"]
                    rows.append((ARMS[arm].label, s["config"]["backend"], str(m["n"]), str(m["correct"]),
                                 f"{m['accuracy']:.3f} {_ci(m)}", f"{s['generation_s'] / 3600:.1f}", _commits(s)))
            parts.append(f"**{model}**, {family.title} (greedy unless stated):\n\n" + markdown_table(rows))
            if f["claims"]:  # a model with no claim decidable yet (the harness check) shows its arms only
                parts.append(f"The claims, {model}, {family.title} (paired on the problems both arms finished; "
                             f"Holm-adjusted p across the {len(f['comparisons'])} comparisons below):\n\n"
                             + markdown_table(verdict_rows(f["claims"]))
                             + "".join(f"\n\n*{line}.*" for line in f["pending"]))
                parts.append(f"Every comparison, {model}, {family.title} (difference in accuracy, a minus b, with "
                             "its paired bootstrap 95% interval; exact McNemar p):\n\n"
                             + markdown_table(comparison_rows(f["comparisons"])))
            if len(f["seeds"]) > 1:
                parts.append(f"The training seeds, {model}, {family.title}: each soft prompt trained with more than "
                             "one seed, on the problems every seed finished (the spread is the noise a difference "
                             "from one training run carries):\n\n" + markdown_table(f["seeds"]))
        if len(r["swarm"]) > 1:
            parts.append(f"The local runs against the same arms through the Petals swarm, {model}:\n\n"
                         + markdown_table(r["swarm"]))
    across = model_rows({model: r["records"] for model, r in results.items()}, tuple(MODELS))
    if len(across) > 1:
        parts.append("The models side by side: each arm run for more than one model, each against the next larger "
                     "one on the problems both ran (the larger minus the smaller, paired bootstrap 95% interval; "
                     "descriptive, no test: claims are judged within one model):\n\n" + markdown_table(across))
    return "\n\n".join(parts)


def answer_markdown(results: Dict[str, dict]) -> str:
    """The answer per claim, as the README leads with it: one row per family and claim, one column per model with
    a claim judged (so a claim reads across models side by side), each cell the verdict with every comparison it
    rests on (difference, 95% interval, Holm p, one per seed); then per model and family the problems and the
    size of the Holm family, and what is still to run."""
    judged = {model: {name: f for name, f in r["families"].items() if f["claims"]} for model, r in results.items()}
    judged = {model: families for model, families in judged.items() if families}
    if not judged:
        return ""
    rows = [("regime", "claim", *judged)]
    for name, family in FAMILIES.items():
        if not any(name in families for families in judged.values()):
            continue
        for claim in family.claims:
            cells = []
            for families in judged.values():
                c = next((c for c in families.get(name, {}).get("claims", []) if c["claim"] == claim.text), None)
                if c is None:
                    cells.append("not judged yet")
                    continue
                seeds = (f" at seed{'s' if len(c['seeds']) > 1 else ''} {', '.join(map(str, c['seeds']))} "
                         f"of {c['of_seeds']}" if c["of_seeds"] > 1 else "")
                cells.append(f"**{c['verdict']}**{seeds}" + "".join(f"<br>{claim_difference(x)}"
                                                                     for x in c["comparisons"]))
            rows.append((family.title, claim.text, *cells))
    notes = []
    for model, families in judged.items():
        for name, f in families.items():
            n = sorted({c["n"] for claim in f["claims"] for c in claim["comparisons"]})
            notes.append(f"- **{model}**, {FAMILIES[name].title}: {' to '.join(f'{x:,}' for x in n[::max(len(n) - 1, 1)])} "
                         f"test problems, Holm across {len(f['comparisons'])} comparison{'s' * (len(f['comparisons']) != 1)}.")
            notes += [f"  - *{line}.*" for line in f["pending"]]
    return markdown_table(rows) + "\n\n" + "\n".join(notes)


def holm_phrase(results: Dict[str, dict], model: str, a: str, b: str, n: int) -> str:
    """`; Holm-adjusted across the study's N comparisons p = x: significant` for the study's comparison of arm a
    with arm b (`study_results`), where it compares these very `n` problems; '' where it does not. What a
    notebook prints beside a raw McNemar p, so no raw p goes without its family's correction."""
    for f in results.get(model, {}).get("families", {}).values():
        for c in f["comparisons"]:
            if (c["a"], c["b"]) == (a, b) and c["n"] == n:
                return (f"; Holm-adjusted across the study's {len(f['comparisons'])} comparisons p = {c['p_holm']:.2g}: "
                        + ("not significant" if c["outcome"] == "not significant" else "significant"))
    return ""


def generated_parts(text: str, where: str, results: Dict[str, dict]) -> str:
    """`text` with every generated part it has (the study's tables, the answer) made anew from `results`."""
    makers = [(m, make) for m, make in ((MARKERS, study_markdown), (ANSWER_MARKERS, answer_markdown)) if m[0] in text]
    if not makers:
        raise UserError(f"--markdown {where}: no generated part in it (a line '{MARKERS[0]}' or "
                        f"'{ANSWER_MARKERS[0]}', later its end line)")
    for markers, make in makers:
        text = replace_generated(text, make(results), where, markers)
    return text


def replace_generated(text: str, generated: str, where: str, markers: Tuple[str, str] = MARKERS) -> str:
    """`text` with the part between `markers` replaced by `generated`; `where` names the file in the error."""
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise UserError(f"--markdown {where}: no results markers in it (a line '{markers[0]}', later a line "
                        f"'{markers[1]}')")
    return text[:start + len(markers[0])] + "\n\n" + generated + "\n\n" + text[end:]


def generated_part(text: str, markers: Tuple[str, str] = MARKERS) -> str:
    """What `replace_generated` put between the markers ('' if there are none)."""
    start, end = text.find(markers[0]), text.find(markers[1])
    return text[start + len(markers[0]):end].strip() if 0 <= start < end else ""


def run_path(summary: dict) -> Path:
    """The records file beside a loaded summary."""
    return Path(summary["path"]).with_name(summary["run_id"] + ".jsonl")


def run_records(summary: dict) -> List[dict]:
    """A run's graded records (backend errors left out): what every comparison and plot uses."""
    return graded(read_records(run_path(summary)))


def baselines(summaries: List[dict], dtype: str = "float32") -> Dict[str, dict]:
    """Per model, its plain greedy chain-of-thought run in `dtype` (the default few-shot prompt, no soft prompt)
    with the most problems: what the model's other runs in that dtype are compared with. Other prompts of the
    cot method (the zero-shot control of prompt tuning) are methods, not the baseline. Runs of different models
    or dtypes are never paired."""
    cot_prompt = RunConfig(method="cot").prompt
    out = {}
    for s in summaries:
        config = s["config"]
        if (config["method"] == "cot" and config["prompt"] == cot_prompt and s["n_samples"] == 1
                and not config.get("soft_prompt") and dtype_of(config) == dtype):
            best = out.get(config["model"])
            if best is None or s["metrics"]["answer"]["n"] > best["metrics"]["answer"]["n"]:
                out[config["model"]] = s
    return out


def comparison_table(summaries: List[dict]) -> str:
    """Each run against its model's baseline in its own dtype, on their common problems: outcome counts and the
    exact McNemar p."""
    dtypes = sorted({dtype_of(s["config"]) for s in summaries})
    bases = {(m, d): b for d in dtypes for m, b in baselines(summaries, d).items()}
    rows = [("run", "n", "both right", "only run", "only baseline", "both wrong", "McNemar p")]
    for s in summaries:
        base = bases.get((s["config"]["model"], dtype_of(s["config"])))
        if base is None or s["run_id"] == base["run_id"]:
            continue
        p = paired(run_records(s), run_records(base))
        rows.append((s["run_id"], str(p["n"]), str(p["both_right"]), str(p["only_a"]), str(p["only_b"]),
                     str(p["both_wrong"]), f"{p['p_value']:.3f}"))
    return text_table(rows) + "".join(f"\nbaseline for {m} in {d}: {b['run_id']}" for (m, d), b in bases.items())


def maj_table(summaries: List[dict]) -> str:
    """maj@k with intervals for every sampled run."""
    rows = [("run", "k", "maj@k", "95% CI", "invalid")]
    for s in summaries:
        for m in s.get("maj_curve") or []:
            rows.append((s["run_id"], str(m["k"]), f"{m['accuracy']:.3f}", _ci(m), f"{m['invalid_rate']:.2f}"))
    return text_table(rows)


def method_comparison(runs: Dict[str, List[dict]]):
    """Named runs on the problems all of them finished: accuracy with its 95% interval per run, and every pair
    with the exact McNemar test. Returns two DataFrames (per run, per pair)."""
    import itertools

    import pandas as pd

    common = set.intersection(*({r["idx"] for r in records} for records in runs.values()))
    runs = {name: [r for r in records if r["idx"] in common] for name, records in runs.items()}
    per_run = pd.DataFrame([{"method": name, "n": len(recs),
                             **{k: round(v, 3) for k, v in accuracy(recs).items() if k != "n"}}
                            for name, recs in runs.items()]).set_index("method")
    pairs = pd.DataFrame([{"a": a, "b": b, **paired(runs[a], runs[b])}
                          for a, b in itertools.combinations(runs, 2)])
    return per_run, (pairs.set_index(["a", "b"]) if len(pairs) else pairs)  # one run has no pairs yet


def plot_forest(arms: Dict[str, Dict[str, dict]], path: Path) -> None:
    """The study at a glance: accuracy with its 95% interval for every arm (rows) and model (colours); a run
    through the swarm is labelled so."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [a for a in ARMS if any(a in by_arm for by_arm in arms.values())]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.42 * len(order)))
    for j, (model, by_arm) in enumerate(arms.items()):
        ys = [order.index(a) + 0.3 * (j - (len(arms) - 1) / 2) for a in by_arm]
        ms = [s["metrics"]["answer"] for s in by_arm.values()]
        ax.errorbar([m["accuracy"] for m in ms], ys, fmt="o", capsize=3, label=model,
                    xerr=[[m["accuracy"] - m["ci_low"] for m in ms], [m["ci_high"] - m["accuracy"] for m in ms]])
        for y, m, s in zip(ys, ms, by_arm.values()):
            swarm = ", swarm" if s["config"]["backend"] == "petals" else ""
            ax.annotate(f"{m['accuracy']:.3f} (n={m['n']}{swarm})", (m["ci_high"], y), xytext=(4, -3),
                        textcoords="offset points", fontsize=6)
    ax.set_yticks(range(len(order)), [ARMS[a].label for a in order])
    ax.invert_yaxis()
    ax.set_xlabel("GSM8K test accuracy (95% Wilson interval)")
    top = max(s["metrics"]["answer"]["ci_high"] for by_arm in arms.values() for s in by_arm.values())
    ax.set_xlim(0, top * 1.25 + 0.01)  # room for the labels right of the intervals
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(arms), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_differences(results: Dict[str, dict], path: Path) -> None:
    """The study's headline figure: every paired comparison of each model and family as its difference in
    accuracy with the paired bootstrap 95% interval, for each model and family with a claim judged; the claims'
    comparisons first and in colour, each arm against the family's baseline after them in grey; a filled marker
    is significant after Holm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    blocks = []  # (title, [(comparison, is a claim's)])
    for model, r in results.items():
        for name, f in r["families"].items():
            claimed = [c for claim in f["claims"] for c in claim["comparisons"]]
            rest = [c for c in f["comparisons"] if c not in claimed]
            if claimed:  # a family with no claim judged yet (the harness check's) stays in docs/results.md
                blocks.append((f"{model}, {FAMILIES[name].title.replace('`', '')}",
                               [(c, True) for c in claimed] + [(c, False) for c in rest]))
    rows = sum(len(b) + 1 for _, b in blocks)
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.28 * rows))
    y, ticks, labels = 0, [], []
    for title, block in blocks:
        ax.text(0.0, y, title, transform=ax.get_yaxis_transform(), fontsize=8, fontweight="bold", va="center",
                ha="left")
        y += 1
        for c, claim in block:
            colour = "C0" if claim else "0.45"
            significant = c["outcome"] != "not significant"
            ax.errorbar(c["diff"], y, xerr=[[c["diff"] - c["diff_ci_low"]], [c["diff_ci_high"] - c["diff"]]],
                        fmt="o", color=colour, capsize=2, markersize=5,
                        markerfacecolor=colour if significant else "white")
            ticks.append(y)
            labels.append(f"{ARMS[c['a']].label} vs {ARMS[c['b']].label} (n={c['n']})")
            y += 1
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(y - 0.5, -0.7)
    ax.set_xlabel("difference in accuracy, a minus b (paired bootstrap 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o", color="C0", linestyle="", label="a claim's comparison"),
               Line2D([], [], marker="o", color="0.45", linestyle="", label="an arm vs the family's baseline"),
               Line2D([], [], marker="o", color="black", linestyle="", label=f"filled: Holm p < {ALPHA}"),
               Line2D([], [], marker="o", color="black", markerfacecolor="white", linestyle="",
                      label="hollow: not significant")]
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_maj_curves(summaries: List[dict], path: Path) -> None:
    """maj@k against k for every sampled run, with 95% intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for s in summaries:
        curve = s.get("maj_curve") or []
        if curve:
            ks = [m["k"] for m in curve]
            errors = [[m["accuracy"] - m["ci_low"] for m in curve], [m["ci_high"] - m["accuracy"] for m in curve]]
            ax.errorbar(ks, [m["accuracy"] for m in curve], yerr=errors, capsize=3, marker="o", label=s["run_id"])
    ax.set(xlabel="k (sampled completions voted on)", ylabel="maj@k accuracy")
    ax.legend(fontsize=6, loc="lower left", bbox_to_anchor=(0, 1.01))  # above the axes: never over a curve
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
