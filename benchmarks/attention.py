"""Milliseconds per attention call of the engine's implementations, float32 and bfloat16, decode and prefill shapes.

The shapes are the study model's (Qwen2.5-Coder-0.5B: 14 query heads over 2 KV heads of dimension 64) and the
engine's: keys and values are a view of a slot cache with room beyond the attended length, the mask is the
engine's boolean one. Rows are run in one call, as the engine decodes them. `kv_llama.attend` picks one of these
implementations per dtype; this script is the measurement behind that choice. Run it on an idle machine and
name the CPU (`lscpu`) beside its figures:

    .venv/bin/python benchmarks/attention.py
    .venv/bin/python benchmarks/attention.py --rows 1,32 --length 900 --reps 20
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gsmswarm.backends.kv_llama import grouped_matmul, sdpa

HEADS, KV_HEADS, DIM = 14, 2, 64


def sdpa_no_mask(q, k, v, mask):
    """A lower bound for SDPA: no mask to read (only right for decode over exactly the attended keys)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def sdpa_expanded(q, k, v, mask):
    """SDPA over KV heads repeated to the query heads (transformers' `repeat_kv`)."""
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


IMPLEMENTATIONS = {"sdpa (bool mask, grouped KV)": sdpa, "sdpa, no mask": sdpa_no_mask,
                   "sdpa, KV expanded": sdpa_expanded, "grouped matmuls, softmax fp32": grouped_matmul}


def inputs(rows, t, length, dtype):
    """q, keys, values, mask as the engine passes them: keys a view of a cache with 25% spare capacity."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, HEADS, t, DIM, generator=g).to(dtype)
    cache_k = torch.randn(rows, KV_HEADS, int(length * 1.25), DIM, generator=g).to(dtype)
    cache_v = torch.randn(rows, KV_HEADS, int(length * 1.25), DIM, generator=g).to(dtype)
    positions = torch.arange(length - t, length).expand(rows, t)
    mask = torch.arange(length)[None, None, None, :] <= positions[:, None, :, None]
    return q, cache_k[:, :, :length], cache_v[:, :, :length], mask


def time_ms(fn, args, reps: int) -> float:
    with torch.inference_mode():
        fn(*args)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,8,32,64", help="decode batch sizes (comma-separated)")
    parser.add_argument("--length", type=int, default=900, help="attended positions (8-shot prompt + answer)")
    parser.add_argument("--prefill", default="1x900,8x120", help="prefill shapes ROWSxTOKENS (comma-separated)")
    parser.add_argument("--reps", type=int, default=10, help="timed calls per cell (median reported)")
    args = parser.parse_args()
    shapes = [("decode", int(r), 1) for r in args.rows.split(",")]
    shapes += [("prefill", *map(int, s.split("x"))) for s in args.prefill.split(",") if s]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; heads {HEADS}/{KV_HEADS}, dim {DIM}, "
          f"{args.length} attended positions; median ms per call of {args.reps}\n")
    print("| shape | rows x queries | implementation | float32 ms | bfloat16 ms | bf16 / fp32 | max abs error bf16 |")
    print("|---|---|---|---|---|---|---|")
    for kind, rows, t in shapes:
        length = max(args.length, t)
        reference = sdpa(*[x.double() if x.is_floating_point() else x for x in inputs(rows, t, length, torch.float32)])
        for label, fn in IMPLEMENTATIONS.items():
            if fn is sdpa_no_mask and kind == "prefill":
                continue
            ms = {}
            for dtype in (torch.float32, torch.bfloat16):
                ms[dtype] = time_ms(fn, inputs(rows, t, length, dtype), args.reps)
            err = (fn(*inputs(rows, t, length, torch.bfloat16)).double() - reference).abs().max().item()
            print(f"| {kind} | {rows} x {t} | {label} | {ms[torch.float32]:.2f} | {ms[torch.bfloat16]:.2f} | "
                  f"{ms[torch.bfloat16] / ms[torch.float32]:.2f} | {err:.3f} |", flush=True)


if __name__ == "__main__":
    main()
