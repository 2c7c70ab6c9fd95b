"""Greedy decoding from the cached prefix (`Backend._cached_prefix`) vs encoding every prompt anew, locally.

Chain-of-thought and calculator CoT on the same first test problems, each problem solved once with the cache
and once without, alternating, in one invocation; the completions must be identical. The calculator sends its
prompt again after every `<<a op b=` pause, so it gains the most.

    .venv/bin/python benchmarks/prompt_cache.py [--model qwen2.5-coder-0.5b] [--questions 4]
"""
import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=4, help="first test problems")
    parser.add_argument("--methods", nargs="+", default=["cot", "calculator"], choices=["cot", "calculator", "pal"])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    import torch

    from gsmswarm.backends import load_backend
    from gsmswarm.config import GenerationConfig, RunConfig
    from gsmswarm.convert import resolve_model
    from gsmswarm.data import load_split
    from gsmswarm.methods import get_method
    from gsmswarm.prompts import load_prompt
    from gsmswarm.results import git_commit

    problems = load_split("test", args.questions)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    backend = load_backend("local", resolve_model(args.model))
    backend.generate("1 + 1 =", GenerationConfig(max_new_tokens=2))  # warm-up
    seconds = {(m, reuse): 0.0 for m in args.methods for reuse in (False, True)}
    same = dict.fromkeys(args.methods, 0)
    for m in args.methods:
        method, template = get_method(m), load_prompt(RunConfig(method=m).prompt)
        for i, problem in enumerate(problems):
            texts = {}
            for reuse in (i % 2 == 1, i % 2 == 0):  # alternate which goes first
                backend.reuse_prefix = reuse
                start = time.perf_counter()
                texts[reuse] = method.solve(problem, backend, template, gen)["completions"]
                seconds[m, reuse] += time.perf_counter() - start
            same[m] += texts[True] == texts[False]
            print(f"{m} problem {i}: " + ", ".join(f"{'cached' if r else 'fresh'} {seconds[m, r]:.1f}s"
                                                   for r in (False, True)), file=sys.stderr)
    print(f"local backend, model {args.model}, first {args.questions} test problems, max_new_tokens "
          f"{args.max_new_tokens}, commit {git_commit()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'method':12s} {'fresh s/problem':>16s} {'cached s/problem':>17s} {'fresh/cached':>13s} {'identical':>10s}")
    for m in args.methods:
        fresh, cached = seconds[m, False] / args.questions, seconds[m, True] / args.questions
        print(f"{m:12s} {fresh:16.1f} {cached:17.1f} {fresh / cached:12.2f}x {same[m]:>6d}/{args.questions}")


if __name__ == "__main__":
    main()
