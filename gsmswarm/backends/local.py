"""The local backend: the whole model on this machine, decoding many rows at once (continuous batching).

Every row (one completion of one request) owns a slot of a preallocated attention cache (`kv_llama`). At each
`step` waiting rows take free slots and their prompts are encoded, then every active row decodes one token;
a row that stops (end of sequence, a stop string, the token limit) frees its slot at once, so the next
waiting row starts at the next step instead of waiting for the batch's longest row (vLLM's and TGI's
scheduling, here written small).

A new row starts from the longest prefix of its tokens whose keys and values are already known: the prompt
of the first request (every few-shot prompt of a run begins with the same exemplars), or the tokens left in
the free slot it takes over (the calculator sends its prompt again after each pause, extended by what was
generated). Only the rest of the prompt is encoded. A soft prompt is part of every row's tokens (positions
0..N-1, marked `SOFT`) and so part of every shared prefix.
"""
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional

from ..config import GenerationConfig, UserError
from . import Backend, Completion, row_generators, sample

SOFT = -1  # a soft-prompt position in a row's token list: shared by every row, never a real token id
STOP_TAIL = 8  # tokens decoded to look for a stop string: the stop strings are a few tokens long at most


@dataclass
class _Request:
    key: Hashable
    gen: GenerationConfig
    completions: List[Optional[Completion]]
    start: Optional[float] = None  # when its first row took a slot


@dataclass
class _Row:
    request: _Request
    j: int  # which of the request's completions
    tokens: List[int]  # the prompt, SOFT positions first
    generator: Optional[object]  # torch.Generator of a sampled row
    new: List[int] = field(default_factory=list)


class LocalBackend(Backend):
    name = "local"

    def __init__(self, model_path: str, model, tokenizer, slots: int):
        if getattr(model.config, "model_type", None) != "llama" or getattr(model.config, "rope_scaling", None):
            raise UserError(f"{model_path}: the local backend decodes Llama-architecture models without rope "
                            f"scaling (this one: {model.config.model_type})")
        if slots < 1:
            raise UserError(f"--batch-size must be >= 1, got {slots}")
        self.model_name, self.model, self.tokenizer, self.slots = model_path, model, tokenizer, slots
        self.device, self.dtype = model.device, model.dtype
        self.soft_prompt = None
        self._cache = None  # kv_llama.SlotCache, made at the first step
        self._queue: deque = deque()
        self._rows: Dict[int, _Row] = {}  # slot -> the row decoding there
        self._kept: Dict[int, List[int]] = {}  # free slot -> tokens whose keys and values it still holds
        self._prefix = None  # (tokens, keys, values) of the first prompt, minus its last token

    @classmethod
    def load(cls, model_path: str, device: str = "cpu", dtype=None, batch_size: int = 1, **_) -> "LocalBackend":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=dtype or torch.float32)
        return cls(model_path, model.to(device).eval(), AutoTokenizer.from_pretrained(model_path), batch_size)

    def set_soft_prompt(self, prompt) -> None:
        """Prepend a trained soft prompt (`tuning.SoftPrompt`) to every row from now on; a deep prompt is also
        added to the prefix positions before every block, exactly where Petals' servers add it."""
        self.soft_prompt = prompt
        self._soft = prompt.prompts.to(self.device, self.dtype)
        self._deep = None if prompt.intermediate is None else prompt.intermediate.to(self.device, self.dtype)
        self._prefix, self._kept = None, {}  # cached keys were computed without it

    def trainable(self, prompt):
        """PEFT's prompt tuning (the `ptune` kind) on this model, initialised with `prompt`: the reference the
        swarm's training is checked against. Hidden states come without the prompt positions; the prompt goes in
        front of the embeddings as PEFT's own forward puts it, without that forward's full-vocabulary logits."""
        import torch
        from peft import PromptTuningConfig, TaskType, get_peft_model

        if prompt.mode != "ptune":
            raise UserError("--tuning-mode deep_ptune trains through Petals only (--backend petals)")
        self.set_soft_prompt(prompt)
        self.model.requires_grad_(False)
        peft_model = get_peft_model(self.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                   num_virtual_tokens=prompt.length))
        embedding = peft_model.prompt_encoder["default"].embedding
        with torch.no_grad():
            embedding.weight.copy_(prompt.prompts)
        embedding.weight.requires_grad_(True)

        def hidden(ids):
            embeds = self.model.get_input_embeddings()(ids)
            embeds = torch.cat([peft_model.get_prompt(len(ids)).to(embeds.dtype), embeds], dim=1)
            return self.model.get_decoder()(inputs_embeds=embeds).last_hidden_state[:, prompt.length:]

        return [embedding.weight], hidden

    def submit(self, key, prompt, gen, seed=0):
        soft = [SOFT] * (self.soft_prompt.length if self.soft_prompt is not None else 0)
        tokens = soft + self.tokenizer(prompt).input_ids
        request = _Request(key, gen, [None] * gen.n)
        generators = row_generators(gen, seed) if gen.temperature > 0 else [None] * gen.n
        for j, generator in enumerate(generators):
            self._queue.append(_Row(request, j, tokens, generator))

    def wants_more(self) -> bool:
        return len(self._queue) < self.slots - len(self._rows)

    @property
    def rows_in_flight(self) -> int:
        return len(self._rows)

    def step(self):
        import torch

        finished: List[_Request] = []
        with torch.inference_mode():
            self._admit(finished)
            if not self._queue:
                self._compact()
            if self._rows:
                # decode slots [0, hi): a view of the cache; idle slots below hi decode a dummy token at position 0
                hi = max(self._rows) + 1
                last = torch.full((hi, 1), self.tokenizer.eos_token_id, device=self.device)
                positions = torch.zeros((hi, 1), dtype=torch.long, device=self.device)
                for s, row in self._rows.items():
                    last[s, 0], positions[s, 0] = row.new[-1], len(row.tokens) + len(row.new) - 1
                for s in range(hi):
                    if s not in self._rows:
                        self._kept.pop(s, None)
                hidden = self._forward(slice(0, hi), self._embed(last), positions)
                slots = sorted(self._rows)
                index = torch.tensor(slots, device=self.device)
                self._choose([self._rows[s] for s in slots], hidden[index, 0], finished)
        return [(r.key, r.completions) for r in finished]

    def _admit(self, finished: List[_Request]) -> None:
        """Free slots take waiting rows; each row's prompt is encoded from its longest known prefix."""
        import torch

        from .kv_llama import SlotCache

        free = [s for s in range(self.slots) if s not in self._rows]
        admitted = []
        while self._queue and free and not (admitted and self._prefix is None):  # the first prompt sets the prefix
            row = self._queue.popleft()
            slot, shared, from_prefix = self._best_slot(row.tokens, free)
            free.remove(slot)
            admitted.append((slot, row, shared, from_prefix))
            if row.request.start is None:
                row.request.start = time.perf_counter()
        if not admitted:
            return
        need = max(len(r.tokens) + r.request.gen.max_new_tokens for _, r, _, _ in admitted)
        width = max(len(r.tokens) - shared for _, r, shared, _ in admitted)
        need = max(need, max(shared for _, _, shared, _ in admitted) + width)
        if self._cache is None:
            self._cache = SlotCache(self.model.config, self.slots, need + 64, self.dtype, self.device)
        self._cache.reserve(need)
        for slot, row, shared, from_prefix in admitted:
            if from_prefix:
                self._cache.copy_in(slot, self._prefix[1], self._prefix[2], shared)
            self._kept.pop(slot, None)
            self._rows[slot] = row
        # one forward for all admitted rows, right-padded: padded positions lie beyond each row's end, where
        # the row's own later writes overwrite them before anything attends to them
        pad = self.tokenizer.eos_token_id
        ids = torch.full((len(admitted), width), pad, dtype=torch.long)
        positions = torch.zeros((len(admitted), width), dtype=torch.long)
        for i, (_, row, shared, _) in enumerate(admitted):
            rest = row.tokens[shared:]
            ids[i, :len(rest)] = torch.tensor([pad if t == SOFT else t for t in rest])
            positions[i] = shared + torch.arange(width)
        ids, positions = ids.to(self.device), positions.to(self.device)
        embeds = self._embed(ids)
        for i, (_, row, shared, _) in enumerate(admitted):
            n_soft = sum(t == SOFT for t in row.tokens[shared:])
            if n_soft:
                embeds[i, :n_soft] = self._soft[shared:shared + n_soft]
        rows = torch.tensor([slot for slot, _, _, _ in admitted], device=self.device)
        hidden = self._forward(rows, embeds, positions)
        ends = torch.tensor([len(row.tokens) - shared - 1 for _, row, shared, _ in admitted], device=self.device)
        last = hidden[torch.arange(len(admitted), device=self.device), ends]
        if self._prefix is None:
            slot, row = admitted[0][0], admitted[0][1]
            self._prefix = (row.tokens[:-1], *self._cache.copy_out(slot, len(row.tokens) - 1))
        self._choose([row for _, row, _, _ in admitted], last, finished)

    def _compact(self) -> None:
        """Move rows from the highest slots into free lower ones, so that a draining batch decodes as few
        slots as it has rows (nothing waits, so no free slot is about to be taken)."""
        while self._rows:
            hi = max(self._rows)
            free = [s for s in range(hi) if s not in self._rows]
            if not free:
                return
            row = self._rows.pop(hi)
            n = len(row.tokens) + len(row.new) - 1
            self._cache.move(hi, free[0], n)
            self._rows[free[0]] = row
            self._kept.pop(free[0], None)

    def _best_slot(self, tokens: List[int], free: List[int]):
        """(slot, shared, from_prefix): the free slot whose kept tokens share the longest prefix with `tokens`,
        unless the stored first prompt shares more; at least the last token is always encoded."""
        def common(a: List[int]) -> int:
            n = min(len(a), len(tokens) - 1)
            return next((i for i in range(n) if a[i] != tokens[i]), n)

        slot = max(free, key=lambda s: common(self._kept.get(s, [])))
        own = common(self._kept.get(slot, []))
        shared = common(self._prefix[0]) if self._prefix is not None else 0
        return (slot, shared, True) if shared > own else (slot, own, False)

    def _embed(self, ids):
        from .kv_llama import embed

        return embed(self.model, ids)

    def _forward(self, rows, embeds, positions):
        from .kv_llama import forward

        return forward(self.model, self._cache, rows, embeds, positions, self._deep if self.soft_prompt else None)

    def _choose(self, rows: List[_Row], hidden, finished: List[_Request]) -> None:
        """Next token of each row from its final hidden state; rows that stop free their slots."""
        logits = self.model.lm_head(hidden).float()
        tokens = logits.argmax(-1).tolist()
        sampled: Dict[GenerationConfig, List[int]] = {}  # rows with the same settings sample in one step
        for i, row in enumerate(rows):
            if row.generator is not None:
                sampled.setdefault(row.request.gen, []).append(i)
        for gen, index in sampled.items():
            draws = sample(logits[index].cpu(), gen, [rows[i].generator for i in index]).tolist()
            for i, token in zip(index, draws):
                tokens[i] = token
        eos = self.tokenizer.eos_token_id
        for row, token in zip(rows, tokens):
            gen = row.request.gen
            row.new.append(token)
            tail = self.tokenizer.decode(row.new[-STOP_TAIL:])
            if token == eos or len(row.new) >= gen.max_new_tokens or any(s in tail for s in gen.stop):
                self._release(row, finished)

    def _release(self, row: _Row, finished: List[_Request]) -> None:
        slot = next(s for s, r in self._rows.items() if r is row)
        del self._rows[slot]
        self._kept[slot] = row.tokens + row.new[:-1]  # the last token was never fed: no keys for it
        request = row.request
        latency = (time.perf_counter() - request.start) / len(request.completions)
        request.completions[row.j] = self.finish(row.new, request.gen, latency)
        if all(c is not None for c in request.completions):
            finished.append(request)
