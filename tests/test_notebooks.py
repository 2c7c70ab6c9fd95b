"""Every notebook runs top to bottom on the embedded model and the committed results."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # every notebook runs its analyses on the committed records

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    """Notebook 08 writes its run table to a scratch file here, which must match the committed runs.csv: the
    table a reader downloads is the one the records give, and the test leaves the working tree as it was."""
    nb = nbformat.read(path, as_version=4)
    table = tmp_path / "runs.csv"
    if path.stem.startswith("08_"):
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source += f"\nTABLE_FILE = {str(table)!r}"
    shows_arms = any("SHOWN = " in c.source for c in nb.cells if c.cell_type == "code")
    if shows_arms:  # what the notebook's tables show under each label, read back after it ran
        nb.cells.append(nbformat.v4.new_code_cell("import json\nprint('SHOWN ' + json.dumps(SHOWN))"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if shows_arms:
        shown = json.loads(nb.cells[-1].outputs[0]["text"].split("SHOWN ", 1)[1])
        _check_shown(path.stem, shown)
    if path.stem.startswith("08_"):
        committed = path.parent.parent / "method_results" / "runs.csv"
        assert table.read_text() == committed.read_text(), "runs.csv is stale: re-execute notebook 08 and commit it"


def _check_shown(notebook: str, shown: dict) -> None:
    """With its default parameters a notebook shows, for the study model, the study's runs on all 1,319 test
    problems with the local engine: never a 100-problem swarm check, a dev run or a run of another dtype under an
    arm's label (notebook 05 once showed the swarm check's RAG where its text reported the local run)."""
    from gsmswarm.config import REPO_DIR
    from gsmswarm.results import load_runs, read_records

    runs = {r["run_id"]: r for r in load_runs(str(REPO_DIR / "method_results"))}
    assert shown, f"{notebook} shows no run"
    for label, run_id in shown.items():
        run = runs[run_id]
        if run["config"]["model"] != "qwen2.5-coder-0.5b":
            continue
        n = len(read_records(Path(run["path"]).with_name(run_id + ".jsonl")))
        assert (run["config"]["backend"], run["config"].get("split", "test"), n) == ("local", "test", 1319), (
            f"{notebook} shows {run_id} ({run['config']['backend']}, {n} problems) as {label!r}")


def test_notebooks_are_committed_executed_in_order():
    for path in NOTEBOOKS:
        counts = [c.execution_count for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), f"{path.name}: run 'Restart & Run All' before committing"


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            texts.append(o.get("text", "") + "".join(o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")))
    return "\n".join(texts)


def test_papermill_parameters_take_effect(swarm, tmp_path):
    """Parameters given to papermill (as the README's GPU walkthrough does) reach every cell that uses them: a
    swarm as one comma-separated string, no local check, another problem; another model's runs in notebook 05."""
    import papermill

    peers = ",".join(swarm.initial_peers)
    nb = papermill.execute_notebook(
        str(NOTEBOOKS[0].parent / "02_chain_of_thought.ipynb"), str(tmp_path / "02.ipynb"), kernel_name="python3",
        cwd=str(NOTEBOOKS[0].parent), progress_bar=False,
        parameters=dict(INITIAL_PEERS=peers, LOCAL_CHECK=False, LIVE_PROBLEM=3, LIVE_MAX_NEW_TOKENS=12))
    text = _outputs(nb)
    assert "smollm2-135m, test problem 3 (gold" in text
    assert "starting a loopback swarm" not in text  # it used the swarm it was given
    assert "locally in" not in text and "Live," not in text  # LOCAL_CHECK=False: no local model was loaded

    nb = papermill.execute_notebook(
        str(NOTEBOOKS[0].parent / "05_rag_chroma.ipynb"), str(tmp_path / "05.ipynb"), kernel_name="python3",
        cwd=str(NOTEBOOKS[0].parent), progress_bar=False, parameters=dict(MODEL="smollm2-135m"))
    text = _outputs(nb)
    assert "rag__local__smollm2-135m__rag_cot@k8-nearest_last" in text
    assert "against cot__local__smollm2-135m__cot_8shot" in text  # that model's own baseline (the one with most problems)
    assert "qwen2.5-coder" not in text
