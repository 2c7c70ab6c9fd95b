"""A Llama forward over a preallocated attention cache with one slot per row, for continuous batching.

transformers 4.34's Llama concatenates the cache to every step's keys and materialises the grouped KV heads
(`repeat_kv`), so a batch's memory traffic grows with every step, and its cache has one length for all rows.
Here each slot holds one row's keys and values at positions [0, length); a forward takes any set of rows, each
at its own positions, writes their new keys and values first and then lets every query attend to the keys at
positions <= its own. That one rule is causal masking for a prompt, per-row lengths for a decoding batch and
"stale entries beyond a row's end are never read" for a slot that a shorter row took over. Attention takes
grouped KV heads as they are, by the implementation measured fastest for the dtype and shape (`attend`).

The modules (norms, projections, MLP, rotary embedding) are the Hugging Face model's own; only the order of
calls is written here, so a checkpoint loads exactly as transformers loads it (tests/test_engine.py compares
logits and greedy tokens with `model.generate`).
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..config import UserError


def free_bytes(device) -> int:
    """Memory an allocation on `device` can take now: CUDA's free memory, else Linux's MemAvailable."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


class SlotCache:
    """Keys and values per layer, [slots, kv_heads, capacity, head_dim]; grows (by copying) when asked."""

    def __init__(self, config, slots: int, capacity: int, dtype, device):
        heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
        shape = (slots, heads, capacity, dim)
        _check_fits(2 * config.num_hidden_layers * slots * heads * capacity * dim * dtype.itemsize, device, slots,
                    capacity)
        self.k: List[torch.Tensor] = [torch.zeros(shape, dtype=dtype, device=device)
                                      for _ in range(config.num_hidden_layers)]
        self.v: List[torch.Tensor] = [torch.zeros_like(k) for k in self.k]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        capacity = max(capacity, int(self.capacity * 1.25))
        k = self.k[0]
        _check_fits(2 * len(self.k) * k[:, :, :1].numel() * capacity * k.element_size(), k.device, k.shape[0],
                    capacity)

        def grown(t):
            new = t.new_zeros((*t.shape[:2], capacity, t.shape[3]))
            new[:, :, :t.shape[2]] = t
            return new

        self.k, self.v = [grown(t) for t in self.k], [grown(t) for t in self.v]

    def copy_in(self, slot: int, prefix_k: List[torch.Tensor], prefix_v: List[torch.Tensor], n: int) -> None:
        """Positions [0, n) of `slot` from a stored prefix ([kv_heads, >= n, head_dim] per layer)."""
        for layer in range(len(self.k)):
            self.k[layer][slot, :, :n] = prefix_k[layer][:, :n]
            self.v[layer][slot, :, :n] = prefix_v[layer][:, :n]

    def move(self, src: int, dst: int, n: int) -> None:
        """Positions [0, n) of slot `src` into slot `dst`."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]

    def copy_out(self, slot: int, n: int):
        """Positions [0, n) of `slot`, as a prefix for `copy_in`."""
        return ([k[slot, :, :n].clone() for k in self.k], [v[slot, :, :n].clone() for v in self.v])


def _check_fits(need: int, device, slots: int, capacity: int) -> None:
    """A batch that cannot fit stops with one line instead of the out-of-memory killer ending the run."""
    free = free_bytes(device)
    if need > 0.9 * free:
        raise UserError(f"--batch-size {slots}: the attention cache of {slots} rows x {capacity} positions needs "
                        f"{need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free on {device}; use a smaller "
                        f"--batch-size (the records so far are kept)")


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    return model.get_input_embeddings()(ids)


def forward(model, cache: SlotCache, rows: Optional[torch.Tensor], hidden: torch.Tensor, positions: torch.Tensor,
            deep_prompt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Final hidden states [R, T, hidden] of `hidden` (input embeddings, [R, T, hidden]) for cache slots `rows`
    (a tensor of slot indices, or a slice of consecutive slots: read as a view) at `positions` ([R, T]); their
    keys and values are written to the cache first.

    `deep_prompt` ([layers, N, hidden]): added before each block to the positions < N (a deep soft prompt)."""
    decoder = model.get_decoder()
    if isinstance(rows, slice):
        slot_ids = torch.arange(rows.start, rows.start + hidden.shape[0], device=hidden.device)
    else:
        slot_ids = rows
    length = int(positions.max()) + 1
    # [R, 1, T, L]: a query sees the keys at its own position and before
    mask = torch.arange(length, device=hidden.device)[None, None, None, :] <= positions[:, None, :, None]
    soft = None
    if deep_prompt is not None:
        soft = positions < deep_prompt.shape[1]
        if not soft.any():
            soft = None
    for i, layer in enumerate(decoder.layers):
        if soft is not None:
            add = deep_prompt[i][positions.clamp(max=deep_prompt.shape[1] - 1)].to(hidden.dtype)
            hidden = hidden + add * soft[..., None]
        hidden = hidden + _attention(layer.self_attn, layer.input_layernorm(hidden), cache, i, rows, slot_ids,
                                     positions, mask, length)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return decoder.norm(hidden)


def _attention(attn, x, cache: SlotCache, layer: int, rows, slot_ids, positions, mask, length: int):
    n, t, _ = x.shape
    heads, kv_heads, dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    q = attn.q_proj(x).view(n, t, heads, dim).transpose(1, 2)
    k = attn.k_proj(x).view(n, t, kv_heads, dim).transpose(1, 2)
    v = attn.v_proj(x).view(n, t, kv_heads, dim).transpose(1, 2)
    cos, sin = attn.rotary_emb(v, seq_len=length)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, positions)
    # write first, then read: index [R, T] pairs (slot, position) take [R, T, kv_heads, dim]
    cache.k[layer][slot_ids[:, None], :, positions] = k.transpose(1, 2)
    cache.v[layer][slot_ids[:, None], :, positions] = v.transpose(1, 2)
    keys, values = cache.k[layer][rows, :, :length], cache.v[layer][rows, :, :length]  # a slice: a view
    out = attend(q, keys, values, mask)
    return attn.o_proj(out.transpose(1, 2).reshape(n, t, heads * dim))


def attend(q, keys, values, mask):
    """softmax(q k^T / sqrt(d)) v for q [R, heads, T, d] over grouped keys and values [R, kv_heads, L, d], where
    `mask` ([R, 1, T, L], True = attend) allows it, by the implementation `benchmarks/attention.py` measured
    fastest for the case (AMD Zen 4, no AMX, one decode step of 32 rows over 900 positions, commit 6568541):

    - a decode step (one query per row) in bfloat16 or float16 on a CPU: two grouped matmuls with the softmax in
      float32 (1.6 ms), where PyTorch's fused CPU kernel (SDPA) takes 22 ms, 4x its own float32 time;
    - everything else, SDPA: in float32 it keeps the committed float32 completions bit for bit; a prefill (many
      queries a row) is 2-3x faster in SDPA in either dtype; on a GPU SDPA's fused kernels win."""
    if q.shape[2] == 1 and q.dtype != torch.float32 and q.device.type == "cpu":
        return grouped_matmul(q, keys, values, mask)
    return sdpa(q, keys, values, mask)


def sdpa(q, keys, values, mask):
    """PyTorch's fused attention, grouped KV heads taken as they are."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1])


def grouped_matmul(q, keys, values, mask):
    """Attention as two batched matmuls in the input dtype with the softmax in float32: each KV head's query
    heads are stacked as the columns of one matmul, so grouped keys are read once and never expanded. The scores
    are computed as keys @ queries^T, [.., L, heads of the group], since the cache's keys are a strided view
    ([slots, kv_heads, capacity, d] cut at L) that a batched matmul reads as they are but copies whole when
    transposed (2.6 of 3.5 ms at 32 rows over 900 positions in bf16)."""
    r, heads, t, d = q.shape
    kv, length = keys.shape[1], keys.shape[2]
    g = heads // kv
    q = q.reshape(r * kv, g * t, d)  # query head h uses KV head h // g: the heads of one group are adjacent
    scores = torch.bmm(keys.reshape(r * kv, length, d), q.transpose(1, 2)).transpose(1, 2)
    # to float32 and to [.., heads, L] in one copy, so that the softmax runs along contiguous memory
    scores = scores.to(torch.float32, memory_format=torch.contiguous_format).view(r, kv, g, t, length)
    scores = scores.mul_(d ** -0.5).masked_fill_(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype).view(r * kv, g * t, length)
    return torch.bmm(probs, values.reshape(r * kv, length, d)).view(r, heads, t, d)
