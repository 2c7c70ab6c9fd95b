"""Where an evaluation run's CPU time goes: `torch.profiler` over the engine solving the first N test problems,
the operators with the largest self CPU time and their share of all of it. The model is loaded before the
profiler starts (its weight initialisation and copies would otherwise count), and the run is the engine's own
loop (`engine.run`) on that loaded model. Where the engine has `kv_llama.attend`, the last row is all of attention
(every operator it calls) as one share: the figure the attention issue's goal is about.

    .venv/bin/python benchmarks/profile_engine.py --model qwen2.5-coder-0.5b --dtype bfloat16 --limit 32
"""
import argparse
import contextlib
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import gsmswarm.backends
from gsmswarm.backends import kv_llama
from gsmswarm.config import GenerationConfig, RunConfig
from gsmswarm.convert import resolve_model
from gsmswarm.engine import run

ATTENTION = "kv_llama.attend (all of attention)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="cot")
    p.add_argument("--prompt", help="prompt file (default: the method's)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=32, help="first N test problems")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--top", type=int, default=8, help="operators listed")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(backend="local", model=args.model, method=args.method, prompt=args.prompt,
                           limit=args.limit, output_dir=out, dtype=args.dtype, batch_size=args.batch_size)
        backend = gsmswarm.backends.load_backend("local", resolve_model(args.model), dtype=args.dtype,
                                                 batch_size=args.batch_size)
        gsmswarm.backends.open_backend = lambda *a, **kw: contextlib.nullcontext(backend)  # the loaded one
        attend = getattr(kv_llama, "attend", None)  # the whole attention computation, counted as one row
        if attend is not None:
            def counted(*a):
                with record_function(ATTENTION):
                    return attend(*a)
            kv_llama.attend = counted
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            summary = run(config, GenerationConfig(max_new_tokens=args.max_new_tokens))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n{args.method}, {args.model}, {args.dtype}, batch {args.batch_size}, first {args.limit} test problems, "
          f"{args.max_new_tokens} new tokens at most; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{summary['metrics']['answer']['correct']} correct\n")
    print("| operator | calls | self CPU s | share | ms per call |")
    print("|---|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.1f} | "
              f"{e.self_cpu_time_total / total:.0%} | {e.self_cpu_time_total / e.count / 1e3:.2f} |")
    print(f"| all operators | | {total / 1e6:.1f} | 100% | |")
    whole = next((e for e in events if e.key == ATTENTION), None)
    if whole is not None:
        print(f"| {ATTENTION}, its operators included | {whole.count} | {whole.cpu_time_total / 1e6:.1f} | "
              f"{whole.cpu_time_total / total:.0%} | {whole.cpu_time_total / whole.count / 1e3:.2f} |")


if __name__ == "__main__":
    main()
