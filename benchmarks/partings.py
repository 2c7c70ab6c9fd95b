"""Where two greedy runs of the same problems part, how close the model's top two tokens were there.

Greedy decoding in float32 gives the swarm's completions bit for bit (every float32 swarm check says so). In
bfloat16 they part: the servers' blocks and the local engine round their matmuls differently (as the engine's
own batch sizes do), and where the two best next tokens are within a rounding error of each other the two runs
pick differently and write different texts from there on. That is harmless, but so would a bug look at first
sight. This script tells the two apart: for each problem whose completions differ, it encodes the rendered
prompt (behind the run's soft prompt) and the completions' common tokens once, in float32, and reports at the
first token where they part each run's choice, its rank and the logit margin between the two choices. Ties
show up as the top two tokens a fraction of a logit apart; a wrong swarm as choices far down the ranking.

    .venv/bin/python benchmarks/partings.py method_results/cot/cot__petals__...jsonl method_results/cot/cot__local__...jsonl

Methods whose prompt is the template with the question filled in (CoT, the agent: its trace, observations
included, is the completion) are covered; RAG's prompts depend on its retrieval and are not. Completions are
tokenized again from their text, as the engine does after an agent's pause, so a parting is located on the text
both runs share.
"""
import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class Scorer:
    """Next-token logits of the record's model, in float32, with its soft prompt in front (ptune)."""

    def __init__(self, record: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gsmswarm.convert import resolve_model
        from gsmswarm.prompts import load_prompt
        from gsmswarm.tuning import load_soft_prompt

        path = resolve_model(record["model"])
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.template = load_prompt(record["prompt"], path)
        self.soft = None
        if record.get("soft_prompt"):
            prompt = load_soft_prompt(record["soft_prompt"]["path"])
            if prompt.mode != "ptune":
                sys.exit(f"{record['soft_prompt']['path']}: a {prompt.mode} prompt enters every block; "
                         f"this script puts a soft prompt in front of the input only (ptune)")
            self.soft = prompt.prompts.float()

    def logits(self, ids):
        import torch

        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(torch.tensor([ids]))
            if self.soft is not None:
                embeds = torch.cat([self.soft[None], embeds], dim=1)
            return self.model(inputs_embeds=embeds).logits[0, -1]


def parting(scorer: Scorer, question: str, text_a: str, text_b: str) -> dict:
    """At the first token where the two completions differ: each one's token, its rank (1 = the model's first
    choice) and logit there (None where that completion ended), and the margin between them."""
    from gsmswarm.metrics import first_difference
    from gsmswarm.prompts import render

    prompt = render(scorer.template, question=question)
    a, b = (scorer.tokenizer(prompt + t).input_ids for t in (text_a, text_b))
    i = first_difference(a, b)
    logits = scorer.logits(a[:i])
    order = logits.argsort(descending=True).tolist()
    rank = {t: r for r, t in enumerate(order[:1000], 1)}
    out = {"position": i - len(scorer.tokenizer(prompt).input_ids), "gap_top2": float(logits[order[0]] - logits[order[1]])}
    for side, ids in (("a", a), ("b", b)):
        out[side] = ((scorer.tokenizer.decode([ids[i]]), rank.get(ids[i], ">1000"), float(logits[ids[i]]))
                     if i < len(ids) else None)
    if out["a"] and out["b"]:
        out["margin"] = abs(out["a"][2] - out["b"][2])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", help="a results file (.jsonl), e.g. the swarm check")
    p.add_argument("run_b", help="the results file it is checked against, e.g. the local run")
    p.add_argument("--limit", type=int, default=0, help="look at the first N partings only (0: all)")
    args = p.parse_args()
    from gsmswarm.config import UserError
    from gsmswarm.results import git_commit, read_records

    try:
        a, b = ({r["idx"]: r for r in read_records(path)} for path in (args.run_a, args.run_b))
    except UserError as e:
        sys.exit(str(e))
    common = sorted(a.keys() & b.keys())
    first = a[common[0]] if common else sys.exit("the two runs share no finished problem")
    if first["method"] not in ("cot", "agent"):
        sys.exit(f"{args.run_a}: method {first['method']}: its prompt is not the template with the question filled "
                 f"in (cot and agent are)")
    same_prompt = all(a[i]["prompt_hash"] == b[i]["prompt_hash"] for i in common)
    parted = [i for i in common if a[i]["completions"][0] != b[i]["completions"][0]]
    scorer = Scorer(first)
    rows = [(i, parting(scorer, a[i]["question"], a[i]["completions"][0], b[i]["completions"][0]))
            for i in parted[:args.limit or None]]

    print(f"{Path(args.run_a).name} against {Path(args.run_b).name}: {len(common)} problems both finished, "
          f"{len(common) - len(parted)} identical first completions, {len(parted)} parted"
          f"{'' if same_prompt else ' (the prompts differ!)'}; logits of {first['model']} in float32, code at "
          f"{git_commit()}\n")
    print("| problem | token | A's token (rank, logit) | B's token (rank, logit) | margin | top-2 gap |")
    print("|---|---|---|---|---|---|")
    for i, r in rows:
        side = lambda s: f"`{r[s][0]!r}` ({r[s][1]}, {r[s][2]:.3f})" if r[s] else "end"  # noqa: E731
        margin = f"{r['margin']:.3f}" if "margin" in r else "-"
        print(f"| {i} | {r['position']} | {side('a')} | {side('b')} | {margin} | {r['gap_top2']:.3f} |")
    margins = [r["margin"] for _, r in rows if "margin" in r]
    top2 = sum("margin" in r and {r["a"][1], r["b"][1]} == {1, 2} for _, r in rows)
    if margins:
        print(f"\n{top2} of {len(rows)} partings are between the model's first and second choice; margin median "
              f"{statistics.median(margins):.3f}, max {max(margins):.3f} logits")


if __name__ == "__main__":
    main()
