"""The study: which runs answer its question, and the verdicts they give.

The question is the seed study's two claims: *prompt tuning beats RAG*, and *prompt tuning and RAG combine*.
Each *arm* is one run config (what `python -m gsmswarm run` would be given); `python -m gsmswarm study` runs the
arms in order, each resumable, and `verdicts` turns their records into a verdict per claim. The arms form two
*families*, each one model's runs in one dtype and one prompting regime: the first study's plain `Q:`/`A:`
frames in float32, and the model's own chat template in bfloat16 with every method's variant chosen on dev
(`gsmswarm.selection`). Comparisons never cross a family. Within one, every comparison is paired (the same
problems), reports the difference in accuracy with a paired bootstrap 95% interval, and is tested with the exact
McNemar test, Holm-corrected across the whole family (each claim's comparisons and every arm against the
family's baseline), so a verdict survives having looked at many pairs.

A soft prompt is trained more than once (seeds 1 and 2 beside seed 0): a claim is judged at every seed run, and
is *confirmed* only when its arm is significantly better than every arm it is claimed to beat at each of them,
*refuted* when at each seed it is significantly worse than one of them, and *undecided* otherwise.
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from .config import GenerationConfig, RunConfig, TuningConfig
from .metrics import holm, identical_completions, paired

ALPHA = 0.05
SEEDS = (0, 1, 2)  # the training seeds of a seeded arm's soft prompt


class Arm(NamedTuple):
    label: str  # its name in tables and figures
    fields: dict  # RunConfig / GenerationConfig fields that differ from the defaults
    train: Optional[dict] = None  # the train-prompt settings that make its soft prompt (TuningConfig fields)


class Claim(NamedTuple):
    text: str
    arm: str
    beats: Tuple[str, ...]


class Family(NamedTuple):
    title: str  # how tables name it
    base: str  # the arm every other arm is compared with
    fields: dict  # what every arm of the family sets (its dtype)
    arms: Dict[str, Arm]  # in the order `study` runs them: the claims' arms first
    seeded: Tuple[str, ...]  # arms whose soft prompt is trained with every seed of SEEDS
    claims: Tuple[Claim, ...]


# the chat regime's variants chosen on dev (gsmswarm.selection; a test holds these to its choice): the strongest
# prompt-only one, RAG's (the retrieved problems as reference text in the user turn), PT's soft prompt, trained
# in front of the prompt-only one on the model's own correct answers (self-distillation), and the agent's form
CHAT = {"prompt": "chat_zeroshot_system"}
CHAT_RAG = {"method": "rag", "prompt": "chat_rag_context", "rag_k": 2}
CHAT_PT = {"backend": "petals", **CHAT, "target": "own"}
_DECLARED = {  # each seeded arm's later seeds are added below (FAMILIES)
    "plain": Family(
        "plain `Q:`/`A:` prompts, float32", "cot", {"dtype": "float32"},
        {"cot": Arm("CoT 8-shot", {"method": "cot"}),
         "ptune": Arm("PT", {"prompt": "qa_zeroshot"}, {"backend": "petals"}),  # trained through the swarm
         "rag": Arm("RAG k=8", {"method": "rag"}),
         "ptune_rag": Arm("PT + RAG", {"method": "rag"}, {"backend": "petals"}),
         "zeroshot": Arm("zero-shot", {"prompt": "qa_zeroshot"}),  # PT's frame without the soft prompt
         "pal": Arm("PAL", {"method": "pal"}),
         "calculator": Arm("calculator CoT", {"method": "calculator"}),
         # trained behind retrieved exemplars with PEFT: 4 x ~1,500 tokens a step ran past the loopback swarm's
         # request timeout, and the two backends give the same losses step by step
         "ragptune_rag": Arm("PT(RAG-trained) + RAG", {"method": "rag"}, {"backend": "local", "context": "rag"}),
         "deep_ptune": Arm("deep PT", {"prompt": "qa_zeroshot"}, {"backend": "petals", "tuning_mode": "deep_ptune"}),
         "sc_t0.7": Arm("SC k=8 T=0.7", {"method": "self_consistency", "n": 8, "temperature": 0.7}),
         "sc_t0.3": Arm("SC k=8 T=0.3", {"method": "self_consistency", "n": 8, "temperature": 0.3})},
        ("ptune", "ptune_rag", "deep_ptune"),
        (Claim("prompt tuning beats RAG", "ptune", ("rag",)),
         Claim("deep prompt tuning beats RAG", "deep_ptune", ("rag",)),
         Claim("prompt tuning and RAG combine", "ptune_rag", ("ptune", "rag")),
         Claim("prompt tuning and RAG combine (prompt trained behind retrieved exemplars)", "ragptune_rag",
               ("ptune", "rag")))),
    "chat": Family(
        "the model's chat template, bfloat16", "chat_zeroshot", {"dtype": "bfloat16"},
        {"chat_zeroshot": Arm("chat zero-shot", CHAT),
         "chat_ptune": Arm("chat PT", CHAT, CHAT_PT),
         "chat_rag": Arm("chat RAG k=2", CHAT_RAG),
         "chat_ptune_rag": Arm("chat PT + RAG", CHAT_RAG, CHAT_PT),
         "chat_deep_ptune": Arm("chat deep PT", CHAT, {**CHAT_PT, "tuning_mode": "deep_ptune"}),
         # trained behind the chat RAG context with PEFT, as the plain family's RAG-trained prompt (on the reference
         # solutions: the model's own answers were written without retrieved problems in front of them)
         "chat_ragptune_rag": Arm("chat PT(RAG-trained) + RAG", CHAT_RAG,
                                  {"backend": "local", "context": "rag", "prompt": CHAT_RAG["prompt"], "rag_k": 2}),
         # the ReAct agent searches the RAG index when it chooses to (gsmswarm.methods.agent): its 8 example traces
         # as chat turns, the form chosen on dev
         "chat_agent": Arm("chat agent (ReAct)", {"method": "agent", "prompt": "chat_agent_8shot"}),
         # the plain frame's CoT and PT in this family's dtype: what connects the two regimes
         "cot_bf16": Arm("plain CoT 8-shot", {"method": "cot"}),
         "ptune_bf16": Arm("plain PT", {"prompt": "qa_zeroshot"}, {"backend": "petals"}),
         "pal_bf16": Arm("PAL (bf16)", {"method": "pal"})},  # the strongest first-study arm besides the soft prompts
        ("chat_ptune", "chat_ptune_rag"),
        # the regime first: is the model's own format (the family's baseline) its strongest prompt?
        (Claim("the model's own chat format beats the plain frame", "chat_zeroshot", ("cot_bf16",)),
         Claim("prompt tuning beats RAG", "chat_ptune", ("chat_rag",)),
         Claim("deep prompt tuning beats RAG", "chat_deep_ptune", ("chat_rag",)),
         Claim("prompt tuning and RAG combine", "chat_ptune_rag", ("chat_ptune", "chat_rag")),
         Claim("prompt tuning and RAG combine (prompt trained behind retrieved exemplars)", "chat_ragptune_rag",
               ("chat_ptune", "chat_rag")),
         Claim("retrieval as an action beats retrieval as context", "chat_agent", ("chat_rag",)))),
}


def _with_seeds(family: Family) -> Family:
    """The family with its seeded arms' later seeds added after them (key `<arm>_s<seed>`)."""
    arms = dict(family.arms)
    for seed in SEEDS[1:]:
        for key in family.seeded:
            arm = family.arms[key]
            arms[seeded(key, seed)] = Arm(f"{arm.label} (seed {seed})", arm.fields, {**arm.train, "seed": seed})
    return family._replace(arms=arms)


def seeded(arm: str, seed: int) -> str:
    """The key of `arm` trained with `seed` (seed 0 is the arm itself)."""
    return arm if seed == 0 else f"{arm}_s{seed}"


FAMILIES = {name: _with_seeds(f) for name, f in _DECLARED.items()}
ARMS = {key: arm for f in FAMILIES.values() for key, arm in f.arms.items()}  # every family's, keys unique
FAMILY_OF = {key: name for name, f in FAMILIES.items() for key in f.arms}
ARM_FIELDS = sorted({k for f in FAMILIES.values() for k in f.fields}
                    | {k for arm in ARMS.values() for k in arm.fields} | {"soft_prompt"})  # not a common flag


def arm_config(arm: str, **common) -> Tuple[RunConfig, GenerationConfig]:
    """The configs of one arm: `common` (model, backend, limit, device, ...) plus the arm's own fields. The
    local backend unless `common` says otherwise: it is the engine the long runs use."""
    family = FAMILIES[FAMILY_OF[arm]]
    return run_configs({"backend": "local", **common, **family.fields, **ARMS[arm].fields}, ARMS[arm].train)


def run_configs(fields: dict, train: Optional[dict] = None) -> Tuple[RunConfig, GenerationConfig]:
    """RunConfig and GenerationConfig from one dict of their fields; with `train` (TuningConfig fields), the
    soft prompt that training makes for this model is the run's `soft_prompt` (the study's arms and the dev
    selection's candidates are built alike)."""
    from .tuning import folder_name

    fields = dict(fields)
    if train is not None:
        training = TuningConfig(model=fields.get("model", RunConfig.model), **train)
        fields["soft_prompt"] = str(Path(training.output_dir) / folder_name(training))
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    return (RunConfig(**{k: v for k, v in fields.items() if k in run_keys}),
            GenerationConfig(**{k: v for k, v in fields.items() if k not in run_keys}))


def command_line(command: str, fields: dict) -> str:
    """The `python -m gsmswarm COMMAND` line that sets these config fields, one flag each."""
    return " ".join(["python -m gsmswarm", command, *(f"--{k.replace('_', '-')} {v}" for k, v in fields.items())])


def training_command(train: dict, model: str) -> str:
    """The `train-prompt` command line of these TuningConfig fields for `model`."""
    return command_line("train-prompt", {"model": model, **train})


def find_arms(summaries: List[dict], model: str, backend: str = "local") -> Dict[str, dict]:
    """The arms of one model among loaded run summaries, by arm key (arms not run yet are absent)."""
    from .results import run_name

    by_id = {s["run_id"]: s for s in summaries}
    names = {arm: run_name(*arm_config(arm, model=model, backend=backend)) for arm in ARMS}
    return {arm: by_id[name] for arm, name in names.items() if name in by_id}


def shown_arms(summaries: List[dict], model: str) -> Dict[str, dict]:
    """The arms tables and figures show: each arm's local run, or its run through the swarm where only that exists
    (the embedded model's CoT and PT were run through the swarm only). Verdicts use the local runs alone."""
    local, swarm = find_arms(summaries, model), find_arms(summaries, model, backend="petals")
    return {arm: local.get(arm) or swarm[arm] for arm in ARMS if arm in local or arm in swarm}


def claim_seeds(claim: Claim, family: str) -> List[Tuple[int, str, Tuple[str, ...]]]:
    """The claim at each seed of its family's arms: (seed, arm, arms it must beat), each arm trained with that
    seed where the family trains it with every seed (PT + RAG at seed 1 against PT at seed 1 and RAG)."""
    arms = FAMILIES[family].arms
    return [(seed, seeded(claim.arm, seed), tuple(seeded(b, seed) if seeded(b, seed) in arms else b
                                                  for b in claim.beats))
            for seed in SEEDS if seeded(claim.arm, seed) in arms]


def verdicts(records: Dict[str, List[dict]], family: str = "plain",
             alpha: float = ALPHA) -> Tuple[List[dict], List[dict]]:
    """From each arm's graded records (one model; arm key -> records): every comparison of the family with its
    Holm-adjusted p and outcome, and one verdict per claim whose seed-0 arms have been run, over the seeds run."""
    fam = FAMILIES[family]
    pairs = [(a, b) for c in fam.claims for _, a, beats in claim_seeds(c, family) for b in beats]
    pairs += [(a, fam.base) for a in fam.arms if a != fam.base]
    pairs = [pair for i, pair in enumerate(pairs)  # each pair tested once, in its first orientation (a claim's)
             if pair not in pairs[:i] and pair[::-1] not in pairs[:i] and all(x in records for x in pair)]
    comparisons = [{"a": a, "b": b, **paired(records[a], records[b])} for a, b in pairs]
    for c, p in zip(comparisons, holm([c["p_value"] for c in comparisons])):
        c["p_holm"] = p
        c["outcome"] = ("not significant" if p >= alpha else "better" if c["diff"] > 0 else "worse")
    by_pair = {(c["a"], c["b"]): c for c in comparisons}
    claims = []
    for claim in fam.claims:
        per_seed, at = {}, claim_seeds(claim, family)  # seed -> (its comparisons, its verdict)
        for seed, arm, beats in at:
            found = [by_pair[(arm, b)] for b in beats if (arm, b) in by_pair]
            if len(found) == len(beats):
                outcomes = [c["outcome"] for c in found]
                per_seed[seed] = (found, "confirmed" if all(o == "better" for o in outcomes) else
                                  "refuted" if "worse" in outcomes else "undecided")
        if 0 not in per_seed:
            continue
        verdict = {v for _, v in per_seed.values()}
        claims.append({"claim": claim.text, "arm": claim.arm, "seeds": sorted(per_seed), "of_seeds": len(at),
                       "comparisons": [c for found, _ in per_seed.values() for c in found],
                       "verdict": verdict.pop() if len(verdict) == 1 else "undecided"})
    return comparisons, claims


def pending_claims(claims: List[dict], arms_run, backend: str = "local", family: str = "plain") -> List[str]:
    """One line per claim not judged yet, or judged at fewer seeds than it will be, naming the arms it still
    needs: a reader sees the question is open rather than not asked, and how many seeds a verdict rests on."""
    judged = {c["claim"]: c["seeds"] for c in claims}
    lines = []
    for claim in FAMILIES[family].claims:
        at = claim_seeds(claim, family)
        missing = [a for _, arm, beats in at for a in (arm, *beats) if a not in arms_run]
        missing = ", ".join(ARMS[a].label for i, a in enumerate(missing) if a not in missing[:i])
        if claim.text not in judged:
            lines.append(f"{claim.text}: not judged yet, no {backend} run of {missing}")
        elif len(judged[claim.text]) < len(at):
            seeds = ", ".join(str(s) for s in judged[claim.text])
            plural = "s" if len(judged[claim.text]) > 1 else ""
            lines.append(f"{claim.text}: judged at seed{plural} {seeds} only, no {backend} run of {missing} yet")
    return lines


def swarm_rows(local: Dict[str, List[dict]], swarm: Dict[str, List[dict]]) -> List[tuple]:
    """Each arm run both locally and through the swarm: identical completions, answers and how many each solves,
    on the problems both finished. The dtype (its family's, the servers' too) says what to expect: float32 gives
    the same greedy text, bfloat16 rounds differently on each side and parts at near ties."""
    rows = [("arm", "dtype", "problems in both", "identical completions", "identical rows", "same answer",
             "solved local / swarm")]
    for arm in ARMS:
        if arm in local and arm in swarm:
            c = identical_completions(local[arm], swarm[arm])
            n = max(c["n"], 1)
            rows.append((ARMS[arm].label, FAMILIES[FAMILY_OF[arm]].fields["dtype"], str(c["n"]),
                         f"{c['identical']} ({c['identical'] / n:.1%})",
                         f"{c['identical_rows']} of {c['rows']}", f"{c['same_pred']} ({c['same_pred'] / n:.1%})",
                         f"{c['correct_a']} / {c['correct_b']}"))
    return rows


def model_rows(records: Dict[str, Dict[str, List[dict]]], order: Tuple[str, ...] = ()) -> List[tuple]:
    """Each arm run for more than one model (model -> arm -> records), each model against the next larger one
    (`order`, smallest first; models it does not name last) on the problems both ran: what scale changes, arm by
    arm. Descriptive, without a test: each model's claims are judged in its own families, and arms are never
    compared across models."""
    models = sorted(records, key=lambda m: (order.index(m) if m in order else len(order), m))
    rows = [("arm", "smaller → larger model", "problems in both", "accuracy, smaller", "accuracy, larger",
             "only the smaller", "only the larger", "difference [95% CI]")]
    for arm in ARMS:
        have = [m for m in models if arm in records[m]]
        for small, large in zip(have, have[1:]):
            c = paired(records[large][arm], records[small][arm])
            n = max(c["n"], 1)
            rows.append((ARMS[arm].label, f"{small} → {large}", str(c["n"]),
                         f"{(c['both_right'] + c['only_b']) / n:.3f}", f"{(c['both_right'] + c['only_a']) / n:.3f}",
                         str(c["only_b"]), str(c["only_a"]), _diff(c)))
    return rows


def seed_rows(records: Dict[str, List[dict]], family: str) -> List[tuple]:
    """Each seeded arm of the family run at more than one seed, on the problems every seed finished: its accuracy
    at each seed, the spread between them, and how many problems the seeds agree on. The noise of training a soft
    prompt once, to read a claim's difference against (descriptive: the claims are judged at each seed)."""
    rows = [("arm", "problems", *(f"seed {s}" for s in SEEDS), "spread", "solved at every seed",
             "solved at some seeds, not all")]
    for key in FAMILIES[family].seeded:
        run = {s: {r["idx"]: r["correct"] for r in records[seeded(key, s)]} for s in SEEDS
               if seeded(key, s) in records}
        if len(run) < 2:
            continue
        common = set.intersection(*(set(c) for c in run.values()))
        n = max(len(common), 1)
        acc = {s: sum(c[i] for i in common) / n for s, c in run.items()}
        solved = [sum(c[i] for c in run.values()) for i in common]
        rows.append((ARMS[key].label, str(len(common)), *(f"{acc[s]:.3f}" if s in acc else "–" for s in SEEDS),
                     f"{max(acc.values()) - min(acc.values()):.3f}", str(solved.count(len(run))),
                     str(sum(0 < k < len(run) for k in solved))))
    return rows


def _diff(c: dict) -> str:
    return f"{c['diff']:+.3f} [{c['diff_ci_low']:+.3f}, {c['diff_ci_high']:+.3f}]"


def claim_difference(c: dict) -> str:
    """One comparison in words: `PT − RAG k=8 +0.075 [+0.052, +0.099], Holm p 1.4e-08`."""
    return f"{ARMS[c['a']].label} − {ARMS[c['b']].label} {_diff(c)}, Holm p {c['p_holm']:.2g}"


def verdict_rows(claims: List[dict]) -> List[tuple]:
    """The verdict table: a header, then a row per comparison of each claim (the claim and its verdict on
    its first row)."""
    rows = [("claim", "verdict", "comparison", "n", "difference [95% CI]", "McNemar p", "Holm p")]
    for claim in claims:
        for i, c in enumerate(claim["comparisons"]):
            rows.append((claim["claim"] if i == 0 else "", claim["verdict"] if i == 0 else "",
                         f"{ARMS[c['a']].label} vs {ARMS[c['b']].label}", str(c["n"]), _diff(c),
                         f"{c['p_value']:.3g}", f"{c['p_holm']:.3g}"))
    return rows


def comparison_rows(comparisons: List[dict]) -> List[tuple]:
    """Every comparison of the family: the difference with its interval, raw and Holm-adjusted p, outcome."""
    rows = [("comparison", "n", "only a", "only b", "difference [95% CI]", "McNemar p", "Holm p", "at 0.05")]
    for c in comparisons:
        rows.append((f"{ARMS[c['a']].label} vs {ARMS[c['b']].label}", str(c["n"]), str(c["only_a"]),
                     str(c["only_b"]), _diff(c), f"{c['p_value']:.3g}", f"{c['p_holm']:.3g}", c["outcome"]))
    return rows
