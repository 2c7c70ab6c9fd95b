"""Seconds per soft-prompt training step through a loopback Petals swarm vs locally with PEFT.

One invocation, the same batches (GSM8K train, question -> solution, right-padded) for both, alternating
local and swarm step by step so that machine noise hits both; the first step of each is a warm-up and not
counted. A step = forward, loss on the solution tokens, backward to the prompt, AdamW update. Prints the
medians and the swarm/local ratio (goal: at most 2x).

    .venv/bin/python benchmarks/prompt_tuning_step.py [--steps 6] [--batch-size 8] [--tuning-mode ptune]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per backend (plus one warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--num-virtual-tokens", type=int, default=16)
    parser.add_argument("--tuning-mode", default="ptune", choices=["ptune", "deep_ptune"],
                        help="for the swarm; the local reference is always PEFT prompt tuning (ptune)")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HIVEMIND_LOGLEVEL="WARNING")
    import torch

    from gsmswarm.backends import load_backend
    from gsmswarm.convert import resolve_model
    from gsmswarm.data import load_split
    from gsmswarm.prompts import load_prompt
    from gsmswarm.results import git_commit
    from gsmswarm.swarm import LoopbackSwarm
    from gsmswarm.tuning import (Tunable, batch_order, encode_example, init_soft_prompt, make_batch,
                                 solution_loss)

    model = str(resolve_model(args.model))
    template = load_prompt("qa_zeroshot")
    problems = load_split("train")
    with LoopbackSwarm(model, Path(tempfile.mkdtemp(prefix="bench-swarm-"))) as swarm:
        backends = {"local": load_backend("local", model),
                    "swarm": load_backend("petals", model, swarm.initial_peers, swarm.dht_prefix)}
        tok = backends["local"].tokenizer
        tunables, optimizers, times = {}, {}, {"local": [], "swarm": []}
        for name, backend in backends.items():
            mode = args.tuning_mode if name == "swarm" else "ptune"
            prompt = init_soft_prompt(tok, backend.model.get_input_embeddings(), mode, args.num_virtual_tokens,
                                      "Solve the math word problem step by step", backend.model.config.num_hidden_layers)
            backend.set_soft_prompt(prompt)
            tunables[name] = Tunable(backend, prompt)
            optimizers[name] = torch.optim.AdamW(tunables[name].params, lr=1e-2)
        n_tokens = []
        for step in range(args.steps + 1):
            batch = [encode_example(problems[i], template, tok, args.max_length)
                     for i in batch_order(len(problems), args.batch_size, step, seed=0)]
            ids, mask = make_batch(batch, tok.eos_token_id)
            n_tokens.append(ids.numel())
            for name in ("local", "swarm"):
                t0 = time.perf_counter()
                loss = solution_loss(tunables[name], ids, mask)
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                if step > 0:
                    times[name].append(time.perf_counter() - t0)
                print(f"step {step} {name:5s} {time.perf_counter() - t0:6.2f} s  loss {loss.item():.3f}"
                      f"{'  (warm-up)' if step == 0 else ''}", flush=True)
        backends["swarm"].close()
    local, remote = median(times["local"]), median(times["swarm"])
    print(f"\nmodel {args.model}, batch {args.batch_size} x up to {args.max_length} tokens "
          f"(median {median(n_tokens[1:]) / args.batch_size:.0f} per row incl. padding), "
          f"{args.num_virtual_tokens} virtual tokens, swarm {args.tuning_mode} (2 loopback servers) vs local PEFT, "
          f"{args.steps} timed steps each, commit {git_commit()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'backend':8s} {'s/step':>7s}")
    print(f"{'local':8s} {local:7.2f}")
    print(f"{'swarm':8s} {remote:7.2f}")
    print(f"swarm/local: {remote / local:.2f}x (goal <= 2x)")
    sys.stdout.flush()
    os._exit(0)  # the Petals client can hang in teardown; everything is printed


if __name__ == "__main__":
    main()
