"""The study's verdicts from hand-built records: each claim's rule, Holm's correction across the family, and
that the arms name the runs `study` writes."""
from pathlib import Path

import pytest

from conftest import cli

from gsmswarm.config import TuningConfig
from gsmswarm.results import run_name
from gsmswarm.study import (ARMS, FAMILIES, arm_config, find_arms, model_rows, pending_claims, seed_rows, swarm_rows,
                            training_command, verdicts)
from gsmswarm.tuning import folder_name

N = 200


def runs(**solved):
    """arm -> records where problems 0..k-1 are right (k = solved[arm]), the rest wrong."""
    return {arm: [{"idx": i, "correct": i < k} for i in range(N)] for arm, k in solved.items()}


def by_claim(claims):
    return {c["arm"]: c for c in claims}


def test_claims_confirmed_refuted_and_missing():
    comparisons, claims = verdicts(runs(cot=30, ptune=60, rag=20, ptune_rag=40))
    claims = by_claim(claims)
    assert claims["ptune"]["verdict"] == "confirmed"  # 40 problems only PT solves, none only RAG solves
    assert claims["ptune_rag"]["verdict"] == "refuted"  # beats RAG, but PT alone solves 20 more
    assert [(c["a"], c["b"], c["outcome"]) for c in claims["ptune_rag"]["comparisons"]] == [
        ("ptune_rag", "ptune", "worse"), ("ptune_rag", "rag", "better")]
    assert "deep_ptune" not in claims  # not run: no verdict rather than a guess, and said so
    assert pending_claims(list(claims.values()), runs(cot=30, ptune=60, rag=20, ptune_rag=40)) == [
        "prompt tuning beats RAG: judged at seed 0 only, no local run of PT (seed 1), PT (seed 2) yet",
        "deep prompt tuning beats RAG: not judged yet, no local run of deep PT, deep PT (seed 1), deep PT (seed 2)",
        "prompt tuning and RAG combine: judged at seed 0 only, no local run of PT + RAG (seed 1), PT (seed 1), "
        "PT + RAG (seed 2), PT (seed 2) yet",
        "prompt tuning and RAG combine (prompt trained behind retrieved exemplars): not judged yet, no local run of "
        "PT(RAG-trained) + RAG"]
    pairs = [(c["a"], c["b"]) for c in comparisons]
    assert len(pairs) == len(set(pairs)) == 6  # 3 claim pairs + 3 arms vs CoT, none twice
    assert all(c["p_holm"] >= c["p_value"] for c in comparisons)


def test_no_difference_is_undecided():
    _, claims = verdicts(runs(cot=30, ptune=40, rag=40, ptune_rag=40))
    assert {c["arm"]: c["verdict"] for c in claims} == {"ptune": "undecided", "ptune_rag": "undecided"}


def test_holm_can_overturn_a_raw_p_below_alpha():
    # PT solves 6 problems RAG does not (exact McNemar p = 0.031), RAG equals CoT: three comparisons, and
    # Holm multiplies the smallest p by 3
    comparisons, claims = verdicts(runs(cot=20, ptune=26, rag=20))
    pt_vs_rag = next(c for c in comparisons if (c["a"], c["b"]) == ("ptune", "rag"))
    assert pt_vs_rag["p_value"] == pytest.approx(0.03125) and pt_vs_rag["p_holm"] == pytest.approx(0.09375)
    assert pt_vs_rag["diff"] == pytest.approx(6 / N) and pt_vs_rag["outcome"] == "not significant"
    assert by_claim(claims)["ptune"]["verdict"] == "undecided"


def test_a_claim_is_confirmed_only_if_it_holds_at_every_seed_run():
    """Each seed's soft prompt is its own arm; PT + RAG at a seed is compared with PT at that seed."""
    solved = dict(cot=30, rag=20, ptune=60, ptune_s1=60, ptune_rag=80, ptune_rag_s1=80)
    comparisons, claims = verdicts(runs(**solved))
    claims = by_claim(claims)
    assert claims["ptune"]["seeds"] == [0, 1] and claims["ptune"]["verdict"] == "confirmed"
    assert [(c["a"], c["b"]) for c in claims["ptune_rag"]["comparisons"]] == [
        ("ptune_rag", "ptune"), ("ptune_rag", "rag"), ("ptune_rag_s1", "ptune_s1"), ("ptune_rag_s1", "rag")]
    assert claims["ptune_rag"]["verdict"] == "confirmed"
    assert pending_claims(list(claims.values()), runs(**solved))[0] == (
        "prompt tuning beats RAG: judged at seeds 0, 1 only, no local run of PT (seed 2) yet")
    _, claims = verdicts(runs(**{**solved, "ptune_s1": 20}))  # seed 1's prompt is no better than RAG
    claims = by_claim(claims)
    assert claims["ptune"]["verdict"] == "undecided"  # seed 0 confirms, seed 1 does not: not confirmed
    _, claims = verdicts(runs(cot=30, rag=20, ptune_s1=60))  # a later seed alone judges nothing
    assert claims == []


def test_seed_rows_show_each_seeded_arms_spread_on_the_problems_every_seed_finished():
    records = runs(ptune=60, ptune_s1=50, ptune_s2=56, ptune_rag=40, deep_ptune=70)
    records["ptune_s2"] = records["ptune_s2"][:100]  # a seed still running: the rows use its 100 problems
    rows = seed_rows(records, "plain")
    assert rows[0][:5] == ("arm", "problems", "seed 0", "seed 1", "seed 2")
    assert rows[1:] == [("PT", "100", "0.600", "0.500", "0.560", "0.100", "50", "10")]  # one seed: no row
    records["ptune_rag_s1"] = runs(x=40)["x"]
    assert seed_rows(records, "plain")[1:] == rows[1:] + [("PT + RAG", "200", "0.200", "0.200", "–", "0.000", "40", "0")]


def test_the_answer_reads_each_claim_across_models_side_by_side():
    """One row per family and claim, one column per model that has a claim judged; a claim one model has not
    reached reads 'not judged yet', and what each model still lacks is listed under the table."""
    from gsmswarm.report import answer_markdown

    def judged(records, family="plain"):
        comparisons, claims = verdicts(records, family)
        return {"families": {family: {"comparisons": comparisons, "claims": claims,
                                      "pending": pending_claims(claims, records, family=family)}}}

    small, large = runs(cot=30, ptune=60, rag=20), runs(cot=50, ptune=60, rag=60, ptune_rag=90)
    text = answer_markdown({"small": judged(small), "large": judged(large), "other": {"families": {}}})
    head, rule, *body = text.split("\n\n")[0].splitlines()
    assert head == "| regime | claim | small | large |"  # the model with no claim judged gets no column
    cells = {row.split(" | ")[1]: row.split(" | ")[2:] for row in body}
    assert cells["prompt tuning beats RAG"][0].startswith("**confirmed** at seed 0 of 3<br>PT − RAG k=8 +0.200")
    assert cells["prompt tuning beats RAG"][1].startswith("**undecided** at seed 0 of 3<br>PT − RAG k=8 +0.000")
    assert cells["prompt tuning and RAG combine"][0] == "not judged yet"
    assert cells["prompt tuning and RAG combine"][1].count("<br>") == 2  # vs PT and vs RAG
    assert "- **small**, plain `Q:`/`A:` prompts, float32: 200 test problems, Holm across 3 comparisons." in text
    assert "  - *prompt tuning and RAG combine: not judged yet, no local run of PT + RAG" in text
    assert answer_markdown({"other": {"families": {}}}) == ""


def test_each_family_compares_only_its_own_arms():
    """Holm's family and every 'vs baseline' row stay within one prompting regime and dtype."""
    comparisons, claims = verdicts(runs(cot=30, ptune=60, rag=20, chat_zeroshot=90, chat_ptune=100), "plain")
    assert {x for c in comparisons for x in (c["a"], c["b"])} == {"cot", "ptune", "rag"}
    comparisons, claims = verdicts(runs(cot_bf16=30, chat_zeroshot=90, chat_ptune=100, ptune=60), "chat")
    # the regime claim's pair is also the baseline's against cot_bf16: tested once, as the claim states it
    assert [(c["a"], c["b"]) for c in comparisons] == [("chat_zeroshot", "cot_bf16"), ("chat_ptune", "chat_zeroshot")]
    assert [(c["claim"], c["verdict"]) for c in claims] == [("the model's own chat format beats the plain frame",
                                                             "confirmed")]


def test_claims_only_name_arms_of_their_family():
    for name, family in FAMILIES.items():
        assert family.base in family.arms
        assert all(c.arm in family.arms and set(c.beats) <= set(family.arms) for c in family.claims)
        assert all(arm_config(a, model="qwen2.5-coder-0.5b")[0].dtype == family.fields["dtype"] for a in family.arms)


def test_arm_configs_fill_in_the_model_and_name_the_runs_find_arms_looks_up():
    config, gen = arm_config("ptune_rag", model="qwen2.5-coder-0.5b", limit=100)
    assert config.backend == "local" and config.method == "rag" and config.limit == 100
    assert config.soft_prompt == "prompt_tuning/ptune__petals__qwen2.5-coder-0.5b__v16__s0"
    config, gen = arm_config("sc_t0.3", model="smollm2-135m", backend="petals")
    assert (config.backend, gen.n, gen.temperature) == ("petals", 8, 0.3)
    summaries = [{"run_id": run_name(*arm_config(a, model="smollm2-135m"))} for a in ("cot", "pal")]
    summaries.append({"run_id": run_name(*arm_config("rag", model="qwen2.5-coder-0.5b"))})  # another model
    assert list(find_arms(summaries, "smollm2-135m")) == ["cot", "pal"]
    assert find_arms(summaries, "smollm2-135m", backend="petals") == {}


def test_an_arms_train_command_makes_the_soft_prompt_the_arm_evaluates():
    from gsmswarm.cli import _build, build_parser

    trained = [a for a in ARMS if ARMS[a].train]
    assert trained == ["ptune", "ptune_rag", "ragptune_rag", "deep_ptune", "ptune_s1", "ptune_rag_s1", "deep_ptune_s1",
                       "ptune_s2", "ptune_rag_s2", "deep_ptune_s2", "chat_ptune", "chat_ptune_rag", "chat_deep_ptune",
                       "chat_ragptune_rag", "ptune_bf16", "chat_ptune_s1", "chat_ptune_rag_s1", "chat_ptune_s2",
                       "chat_ptune_rag_s2"]
    for arm in trained:
        command = training_command(ARMS[arm].train, "qwen2.5-coder-0.5b").split()
        assert command[:4] == ["python", "-m", "gsmswarm", "train-prompt"]
        config = _build(TuningConfig, build_parser().parse_args(command[3:]))
        assert arm_config(arm, model="qwen2.5-coder-0.5b")[0].soft_prompt == f"prompt_tuning/{folder_name(config)}"
    assert arm_config("ragptune_rag", model="qwen2.5-coder-0.5b")[0].soft_prompt == (
        "prompt_tuning/ptune__local__qwen2.5-coder-0.5b__v16__s0__rag8")
    assert arm_config("ptune_rag_s2", model="qwen2.5-coder-0.5b")[0].soft_prompt == (
        "prompt_tuning/ptune__petals__qwen2.5-coder-0.5b__v16__s2")
    assert arm_config("chat_ptune", model="qwen2.5-coder-0.5b")[0].soft_prompt == (
        "prompt_tuning/ptune__petals__qwen2.5-coder-0.5b__v16__s0__own__chat_zeroshot_system")
    assert arm_config("chat_ragptune_rag", model="qwen2.5-coder-0.5b")[0].soft_prompt == (
        "prompt_tuning/ptune__local__qwen2.5-coder-0.5b__v16__s0__rag2__chat_rag_context")


def test_the_chat_arms_are_the_dev_selections_choice():
    """The chat family runs, on the test set, the variants the rule picked on the committed dev records: commit
    dev records that change a choice without changing the arms, and this fails."""
    from gsmswarm.config import REPO_DIR
    from gsmswarm.report import recompute
    from gsmswarm.selection import CANDIDATES, OUTPUT_DIR, candidate_summaries, choose

    found = candidate_summaries(recompute(str(REPO_DIR / OUTPUT_DIR), save=False), model="qwen2.5-coder-0.5b")
    chosen = {method: next(c for c in CANDIDATES if c.label == label) for method, label in choose(found).items()}
    chat = FAMILIES["chat"].arms
    assert chat["chat_zeroshot"].fields == chosen["prompt only"].fields
    assert chat["chat_rag"].fields == {"method": "rag", **chosen["RAG"].fields}
    assert chat["chat_ptune"].train["prompt"] == chosen["prompt only"].fields["prompt"]
    assert chat["chat_ptune"].train == chat["chat_ptune_rag"].train == chosen["PT"].train
    assert chat["chat_deep_ptune"].train == {**chosen["PT"].train, "tuning_mode": "deep_ptune"}
    assert chat["chat_agent"].fields == chosen["agent"].fields
    deep = [c for c in CANDIDATES if c.method == "deep PT"]  # deep PT is trained for the target PT's choice took
    assert [c.train for c in deep] == [chat["chat_deep_ptune"].train]


def test_the_study_takes_a_soft_prompt_only_once_its_training_ended(tmp_path):
    """A folder whose run is still training (a session ended mid-run) holds the best prompt so far: the study
    must not evaluate it as the arm's prompt."""
    import json

    from gsmswarm.tuning import unfinished

    folder = tmp_path / "ptune__local__m__v16__s0"
    assert unfinished(folder) == f"no soft prompt {folder} yet"
    folder.mkdir()
    (folder / "soft_prompt.safetensors").write_bytes(b"")
    assert "no readable config.json and train_log.jsonl" in unfinished(folder)
    (folder / "config.json").write_text(json.dumps({"steps": 120}))
    (folder / "train_log.jsonl").write_text('{"step": 0, "dev_loss": 0.9}\n{"step": 37, "loss": 0.8}\n')
    assert unfinished(folder) == f"soft prompt {folder} trained 37 of 120 steps so far"
    with open(folder / "train_log.jsonl", "a") as f:
        f.write('{"step": 120, "lo')  # killed while writing: the training's resume drops this line, so does the count
    assert unfinished(folder) == f"soft prompt {folder} trained 37 of 120 steps so far"
    (folder / "train_log.jsonl").write_text('{"step": 0, "dev_loss": 0.9}\n{"step": 120, "loss": 0.7}\n'
                                            '{"step": 120, "dev_loss": 0.8}\n')
    assert unfinished(folder) is None
    trained = Path(__file__).resolve().parent.parent / "prompt_tuning"
    seeds = sorted(trained.glob("*ptune__petals__qwen2.5-coder-0.5b__v16__s*"))  # the study's prompts, one per seed
    assert {f.name.split("__")[0] for f in seeds} == {"deep_ptune", "ptune"}
    assert all(unfinished(trained / f"{mode}__petals__qwen2.5-coder-0.5b__v16__s0") is None
               for mode in ("ptune", "deep_ptune"))  # seed 0 of each is finished; later seeds may be mid-training


def test_swarm_rows_count_identical_completions_on_common_problems():
    def recs(texts):  # gold "1" for every problem
        return [{"idx": i, "completions": [t], "pred": t[-1], "correct": t[-1] == "1"} for i, t in enumerate(texts)]

    def sampled(rows_per_problem):
        return [{"idx": i, "completions": rows, "pred": "1", "correct": True} for i, rows in enumerate(rows_per_problem)]

    local = {"cot": recs(["a 1", "b 2", "c 3", "d 4"]), "rag": recs(["x 1"]),
             "sc_t0.7": sampled([["a 1", "b 1"], ["c 1", "d 1"]]), "chat_agent": recs(["a 1"])}
    swarm = {"cot": recs(["a 1", "B 2", "c 3", "D 1"]),  # problem 1 differs in text but not in its answer,
             "sc_t0.7": sampled([["a 1", "b 1"], ["c 1", "D 1"]]),  # problem 3 in its answer; one SC row parts
             "chat_agent": recs(["a 1"])}  # the chat family's dtype
    assert swarm_rows(local, swarm) == [
        ("arm", "dtype", "problems in both", "identical completions", "identical rows", "same answer",
         "solved local / swarm"),
        ("CoT 8-shot", "float32", "4", "2 (50.0%)", "2 of 4", "3 (75.0%)", "1 / 2"),
        ("SC k=8 T=0.7", "float32", "2", "1 (50.0%)", "3 of 4", "2 (100.0%)", "2 / 2"),
        ("chat agent (ReAct)", "bfloat16", "1", "1 (100.0%)", "1 of 1", "1 (100.0%)", "1 / 1")]


def test_model_rows_pair_each_model_with_the_next_larger_on_common_problems():
    def recs(outcomes, start=0):
        return [{"idx": start + i, "correct": c} for i, c in enumerate(outcomes)]

    records = {"big": {"cot": recs([1, 1, 1, 0, 1]), "rag": recs([1])},  # one problem more than "small" ran
               "small": {"cot": recs([1, 0, 0, 1]), "pal": recs([1])},
               "tiny": {"cot": recs([0, 0, 0, 0], start=2)}}  # overlaps the others on problems 2 and 3
    rows = model_rows(records, order=("tiny", "small", "big"))
    assert [r[:7] for r in rows[1:]] == [("CoT 8-shot", "tiny → small", "2", "0.000", "0.500", "0", "1"),
                                         ("CoT 8-shot", "small → big", "4", "0.500", "0.750", "1", "2")]
    assert rows[2][7].startswith("+0.250 [")  # larger minus smaller
    assert len(model_rows({"small": records["small"]})) == 1  # one model: the header alone


def test_the_readmes_answer_and_the_results_tables_are_the_records():
    """README.md's answer and docs/results.md's tables are exactly what `summarize --markdown README.md
    docs/results.md` makes from the committed records: commit records without regenerating them, or edit a
    number by hand, and this fails."""
    from gsmswarm.config import REPO_DIR
    from gsmswarm.report import (ANSWER_MARKERS, MARKERS, answer_markdown, generated_part, recompute, study_markdown,
                                 study_results)

    results = study_results(recompute(str(REPO_DIR / "method_results"), save=False))
    command = "run python -m gsmswarm summarize --markdown README.md docs/results.md"
    for name, markers, make in (("README.md", ANSWER_MARKERS, answer_markdown),
                                ("docs/results.md", MARKERS, study_markdown)):
        text = (REPO_DIR / name).read_text()
        assert generated_part(text, markers), f"{name} has no generated part"
        assert generated_part(text, markers) == make(results), f"{name} differs from method_results/: {command}"


def test_summarize_markdown_rewrites_only_the_generated_part(tmp_path):
    import shutil

    from gsmswarm.config import REPO_DIR
    from gsmswarm.report import MARKERS

    results = tmp_path / "results"
    for name in ("cot__local__qwen2.5-coder-0.5b__cot_8shot__test__n1__t0__s0",
                 "cot__local__qwen2.5-coder-0.5b__qa_zeroshot__test__n1__t0__s0"):
        for suffix in (".jsonl", ".summary.json"):
            (results / "cot").mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_DIR / "method_results" / "cot" / (name + suffix), results / "cot")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\n\nbefore\n\n{MARKERS[0]}\nstale | table\n{MARKERS[1]}\n\nafter\n")
    done = cli("summarize", "--output-dir", str(results), "--markdown", str(doc))
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert text.startswith("# title\n\nbefore\n\n" + MARKERS[0]) and text.endswith(MARKERS[1] + "\n\nafter\n")
    assert "stale" not in text
    assert "| CoT 8-shot | local | 1319 | 174 | 0.132 [0.115, 0.151] | 1.0 | `2ebda20` |" in text
    assert "| zero-shot | local | 1319 | 45 | 0.034 [0.026, 0.045] | 1.1 | `69a5b62`, `9a6a574` |" in text
    assert "The claims" not in text  # no claim has its arms among these runs: the arms alone

    doc.write_text("no markers here\n")
    done = cli("summarize", "--output-dir", str(results), "--markdown", str(doc))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and str(doc) in done.stderr
    assert doc.read_text() == "no markers here\n"  # untouched
