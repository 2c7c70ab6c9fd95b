"""Cost of self-consistency: k sampled completions as one batch vs k sequential calls vs one greedy call.

All three run in one invocation on the same questions with the real prompt, stop strings and token limit,
so the ratios say what maj@k costs relative to a greedy chain-of-thought run on this machine.

    .venv/bin/python benchmarks/self_consistency.py [--backend petals] [--questions 3] [--k 8]
"""
import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="petals", choices=["petals", "local"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=3, help="first test problems")
    parser.add_argument("--k", type=int, default=8, help="sampled completions per question")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HIVEMIND_LOGLEVEL="WARNING")

    from gsmswarm.backends import open_backend
    from gsmswarm.config import CACHE_DIR, GenerationConfig
    from gsmswarm.convert import resolve_model
    from gsmswarm.data import load_split
    from gsmswarm.prompts import load_prompt, render
    from gsmswarm.results import git_commit

    template = load_prompt("cot_8shot")
    prompts = [render(template, question=p.question) for p in load_split("test", args.questions)]
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens)
    batched = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, n=args.k)
    single = [GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=s)
              for s in range(args.k)]
    seconds = {"greedy x1": 0.0, f"batched k={args.k}": 0.0, f"sequential {args.k}x1": 0.0}
    tokens = dict.fromkeys(seconds, 0)
    with open_backend(args.backend, resolve_model(args.model), workdir=CACHE_DIR / "swarm" / "bench-sc",
                      batch_size=args.k) as backend:  # local: k slots, so the k rows decode as one batch
        backend.generate(prompts[0], GenerationConfig(max_new_tokens=2))  # warm-up: routes, kernels
        for i, prompt in enumerate(prompts):
            for name, gens in ((f"batched k={args.k}", [batched]), ("greedy x1", [greedy]),
                               (f"sequential {args.k}x1", single)):
                start = time.perf_counter()
                outs = [c for gen in gens for c in backend.generate(prompt, gen)]
                seconds[name] += time.perf_counter() - start
                tokens[name] += sum(len(c.token_ids) for c in outs)
            print(f"question {i}: " + ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()), file=sys.stderr)
    print(f"backend {args.backend}, model {args.model}, {args.questions} questions, T={args.temperature}, "
          f"max_new_tokens {args.max_new_tokens}, commit {git_commit()}, {os.cpu_count()} cores")
    print(f"{'mode':16s} {'s/question':>10s} {'tokens/question':>16s}")
    for name in seconds:
        print(f"{name:16s} {seconds[name] / args.questions:10.1f} {tokens[name] / args.questions:16.0f}")
    g, b, s = seconds.values()
    print(f"ratio batched/greedy {b / g:.2f}x (goal <= 3x), sequential/greedy {s / g:.2f}x, "
          f"sequential/batched {s / b:.2f}x")


if __name__ == "__main__":
    main()
