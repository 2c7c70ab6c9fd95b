"""Time per generated token and client peak RSS, locally vs through a loopback Petals swarm.

Both modes run in one invocation on the same prompts, alternating round by round so that machine noise
hits both; each measurement runs in a fresh child process so its peak RSS is its own. Prints a table and
the swarm/local ratios.

    .venv/bin/python benchmarks/swarm_overhead.py [--prompts 3] [--tokens 32] [--rounds 2]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median


def measure(mode: str, model: str, peers: list, n_prompts: int, tokens: int) -> dict:
    """Child process: load one backend, generate `tokens` tokens (no stop strings) per prompt."""
    from gsmswarm.backends import load_backend
    from gsmswarm.config import GenerationConfig
    from gsmswarm.data import load_split
    from gsmswarm.prompts import load_prompt, render

    backend = load_backend(mode, model, peers)
    gen = GenerationConfig(max_new_tokens=tokens, stop=("\x00",))  # a stop that never occurs: fixed length
    template = load_prompt("cot_8shot")
    prompts = [render(template, question=p.question) for p in load_split("test", n_prompts)]
    backend.generate(prompts[0], GenerationConfig(max_new_tokens=2))  # warm-up: routes, kernels
    seconds, n_tokens = 0.0, 0
    for prompt in prompts:
        out = backend.generate(prompt, gen)[0]
        seconds += out.latency_s
        n_tokens += len(out.token_ids)
    backend.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "s_per_token": seconds / n_tokens, "tokens": n_tokens, "peak_rss_mb": rss_mb,
            "prompt_tokens": backend.n_tokens(prompts[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=3, help="8-shot CoT prompts of the first test problems")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--rounds", type=int, default=2, help="local/swarm alternations")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HIVEMIND_LOGLEVEL="WARNING")
    if args.child:
        mode, peers = args.child.split(":", 1)
        print(json.dumps(measure(mode, args.model, peers.split(), args.prompts, args.tokens)))
        return

    from gsmswarm.convert import resolve_model
    from gsmswarm.results import git_commit
    from gsmswarm.swarm import LoopbackSwarm

    model = resolve_model(args.model)
    results = {"local": [], "petals": []}
    with LoopbackSwarm(model, Path(tempfile.mkdtemp(prefix="bench-swarm-"))) as swarm:
        for r in range(args.rounds):
            for mode in ("local", "petals"):
                peers = " ".join(swarm.initial_peers) if mode == "petals" else ""
                out = subprocess.run([sys.executable, __file__, "--model", model, "--prompts", str(args.prompts),
                                      "--tokens", str(args.tokens), "--child", f"{mode}:{peers}"],
                                     capture_output=True, text=True, check=True)
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r} {mode:6s} {results[mode][-1]['s_per_token'] * 1000:7.1f} ms/token", flush=True)
    local, swarm_ = (median(x["s_per_token"] for x in results[m]) for m in ("local", "petals"))
    rss_local, rss_swarm = (max(x["peak_rss_mb"] for x in results[m]) for m in ("local", "petals"))
    print(f"\nmodel {args.model}, {args.prompts} prompts of "
          f"{results['local'][0]['prompt_tokens']}+ tokens, {args.tokens} new tokens each, {args.rounds} rounds, "
          f"commit {git_commit()}, {os.cpu_count()} cores")
    print(f"{'mode':8s} {'ms/token':>9s} {'peak RSS MB':>12s}")
    print(f"{'local':8s} {local * 1000:9.1f} {rss_local:12.0f}")
    print(f"{'swarm':8s} {swarm_ * 1000:9.1f} {rss_swarm:12.0f}")
    print(f"ratio swarm/local: time per token {swarm_ / local:.2f}x, client peak RSS {rss_swarm / rss_local:.2f}x")


if __name__ == "__main__":
    main()
