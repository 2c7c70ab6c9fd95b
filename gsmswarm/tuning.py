"""Soft prompts: prompt tuning (P-tuning) on GSM8K train, through the Petals client or locally with PEFT.

Through the swarm, the client holds the embeddings and the trainable prompt; the servers' blocks stay frozen
and only send gradients back. `ptune` prepends the prompt to the input embeddings; `deep_ptune` also adds a
prompt to the prefix positions before every block (Petals' own scheme, initialised at zero so that both kinds
start from the same function). Locally, PEFT's prompt tuning is the reference for `ptune`.

The loss is next-token cross-entropy on the worked solution only (never on the question), averaged over
solution tokens. A batch is right-padded: in a causal model padding after a sequence cannot change its
outputs, which is what the Petals client's all-ones attention mask needs. The LM head runs only at solution
positions, and a batch may pass in micro-batches (`--micro-batch-size`) whose losses sum to the step's: behind
~1,300 tokens of retrieved exemplars the full-vocabulary logits and attention maps of a whole batch would not
fit in memory, and neither changes the step.

What it learns to write (`--target`): each training problem's worked solution from the dataset, or, with `own`,
the model's own answers to the training problems it solved (self-distillation, as in STaR's rationale
bootstrapping, here without a second round). The first is terse GSM8K text; an instruct model prompted in its
chat format reasons in a longer style of its own, and a soft prompt trained on the terse text may win or lose by
changing that style rather than by what it knows. The own answers come from an ordinary run of the training prompt
alone (`OWN_SOLUTIONS`: greedy, the first 1,500 train problems, its records committed like any run); those graded
correct and not cut by the token limit are the targets, the training problems and the dev problems among them
each, so the dev loss that stops training early is measured on the same kind of text.

A run folder `prompt_tuning/<name>/` holds `soft_prompt.safetensors` (the prompt with the best dev loss;
backend-neutral tensors, loaded into either backend by `load_soft_prompt`), `config.json` (what made it),
`train_log.jsonl` (one line per step, plus dev evaluations), `checkpoint.pt` (last state, for resuming) and,
with `--context rag`, `rag_context.json` (the exemplars each training and dev problem was shown).
"""
import dataclasses
import json
import math
import random
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .config import TuningConfig, UserError, as_dict, one_line
from .data import Problem, dev_indices, load_split
from .prompts import check_slots, load_prompt, prompt_hash, render

SOFT_PROMPT_FILE, CONFIG_FILE, LOG_FILE, CHECKPOINT_FILE, CONTEXT_FILE = (
    "soft_prompt.safetensors", "config.json", "train_log.jsonl", "checkpoint.pt", "rag_context.json")
SWARM_STEP_TRIES = 3  # a training step's tries through the swarm (retry_swarm_step)
# `--target own`: the run whose correct answers a soft prompt learns, with the model and the training prompt;
# bfloat16, the dtype of the chat family the own-answer prompts are compared in
OWN_SOLUTIONS = {"method": "cot", "backend": "local", "dtype": "bfloat16", "split": "train", "limit": 1500,
                 "output_dir": "method_results/train"}


@dataclasses.dataclass
class SoftPrompt:
    mode: str  # 'ptune' or 'deep_ptune'
    prompts: "torch.Tensor"  # [N, hidden]: prepended to the input embeddings
    intermediate: Optional["torch.Tensor"] = None  # deep_ptune: [layers, N, hidden], added before each block
    name: str = ""  # run folder it came from; results record it

    @property
    def length(self) -> int:
        return self.prompts.shape[0]

    def sha256(self) -> str:
        """Content hash of the tensors: a record names exactly the prompt it was made with."""
        import hashlib

        h = hashlib.sha256(self.mode.encode())
        for t in (self.prompts, self.intermediate):
            if t is not None:
                h.update(t.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def petals_weights(self) -> dict:
        """The tensors in the layout of Petals' PTuneMixin embeddings (intermediate: [N, layers * hidden])."""
        weights = {"prompt_embeddings.weight": self.prompts}
        if self.intermediate is not None:
            weights["intermediate_prompt_embeddings.weight"] = self.intermediate.permute(1, 0, 2).reshape(
                self.length, -1)
        return weights


def init_soft_prompt(tokenizer, embeddings, mode: str, length: int, text: str, num_layers: int) -> SoftPrompt:
    """The embeddings of `text`'s tokens, repeated or cut to `length` (PEFT's TEXT init); deep prompts at 0."""
    import torch

    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError("--init-text is empty")
    ids = (ids * math.ceil(length / len(ids)))[:length]
    prompts = embeddings.weight[ids].detach().clone().float()
    intermediate = torch.zeros(num_layers, length, prompts.shape[1]) if mode == "deep_ptune" else None
    return SoftPrompt(mode, prompts, intermediate)


def save_soft_prompt(prompt: SoftPrompt, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"prompts": prompt.prompts.detach().contiguous()}
    if prompt.intermediate is not None:
        tensors["intermediate"] = prompt.intermediate.detach().contiguous()
    tmp = folder / (SOFT_PROMPT_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"mode": prompt.mode})
    tmp.replace(folder / SOFT_PROMPT_FILE)


def load_soft_prompt(folder) -> SoftPrompt:
    """The soft prompt saved in a run folder; UserError naming the file if it is missing or unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / SOFT_PROMPT_FILE
    if not path.is_file():
        raise UserError(f"--soft-prompt {folder}: no {SOFT_PROMPT_FILE} in it (train one with train-prompt)")
    try:
        with safe_open(str(path), framework="pt") as f:
            mode = (f.metadata() or {}).get("mode")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable soft prompt ({e})") from None
    if mode not in ("ptune", "deep_ptune") or "prompts" not in tensors:
        raise UserError(f"{path}: not a soft prompt saved by gsmswarm (mode {mode!r})")
    return SoftPrompt(mode, tensors["prompts"], tensors.get("intermediate"), Path(folder).name)


def unfinished(folder) -> Optional[str]:
    """Why a run folder does not hold the soft prompt of its whole training yet, or None when it does: the
    study evaluates finished prompts only, while `run --soft-prompt` takes any saved one (the best so far)."""
    folder = Path(folder)
    if not (folder / SOFT_PROMPT_FILE).is_file():
        return f"no soft prompt {folder} yet"
    try:
        steps = json.loads((folder / CONFIG_FILE).read_text())["steps"]
        done = max(row["step"] for row in read_train_log(folder))
    except (OSError, ValueError, KeyError, TypeError):  # missing, empty or torn files
        return f"soft prompt {folder} has no readable {CONFIG_FILE} and {LOG_FILE}"
    return None if done >= steps else f"soft prompt {folder} trained {done} of {steps} steps so far"


def target_ids(problem: Problem, template, tokenizer, solution: Optional[str] = None) -> List[int]:
    """What the model learns to write: `solution` (an own answer, `--target own`), else the reference solution as
    an exemplar shows it. After a plain prompt's 'A:': the text, then the exemplars' separator, so a tuned prompt
    ends its answers where CoT's stop strings cut them. After a chat prompt's assistant header: the text as the
    answer turn, then the model's end-of-turn token."""
    text = problem.chain_of_thought if solution is None else solution.strip()
    if getattr(template, "chat", False):
        return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return tokenizer(f" {text}\n\n", add_special_tokens=False).input_ids


def encode_example(problem: Problem, template: str, tokenizer, max_length: int, exemplars: Optional[str] = None,
                   solution: Optional[str] = None) -> Tuple[List[int], int]:
    """Token ids of prompt + target and the prompt's length. The prompt is tokenized alone, as evaluation
    tokenizes it, so training sees exactly the prompt tokens the model will later continue. `exemplars` fill
    the slot of a rag template (`--context rag`, see `rag_context`)."""
    slots = {} if exemplars is None else {"exemplars": exemplars}
    prompt_ids = tokenizer(render(template, question=problem.question, **slots)).input_ids
    return (prompt_ids + target_ids(problem, template, tokenizer, solution))[:max_length], len(prompt_ids)


def own_solutions_run(model: str, prompt: str):
    """The RunConfig and GenerationConfig of the run `--target own` learns from (`OWN_SOLUTIONS`)."""
    from .study import run_configs

    return run_configs(_own_solutions_fields(model, prompt))


def _own_solutions_fields(model: str, prompt: str) -> dict:
    return {**OWN_SOLUTIONS, "model": model, "prompt": prompt}


def own_solutions(model: str, prompt: str) -> Tuple[Dict[int, str], Path]:
    """`--target own`: per train problem (dev ones included) that `own_solutions_run` answered correctly, without
    running into the token limit, the answer it wrote; and its records file. UserError, with the command that
    makes them, while that run has not answered all its problems: a soft prompt learns from one fixed set."""
    from .results import read_records, records_path
    from .study import command_line

    run, gen = own_solutions_run(model, prompt)
    path = records_path(run, gen)
    records = [r for r in read_records(path) if not r.get("error")]
    if len(records) < run.limit:
        raise UserError(f"--target own learns from {path}, which holds {len(records)} of its {run.limit} answers; "
                        f"make them first (resumable): {command_line('run', _own_solutions_fields(model, prompt))}")
    return {r["idx"]: r["completions"][0] for r in records if r["correct"] and not r["truncated"][0]}, path


def make_batch(examples: List[Tuple[List[int], int]], pad_id: int):
    """Right-padded ids and a mask that is 1 where a token is a target (solution) token."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, (tokens, n_prompt) in enumerate(examples):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, n_prompt:len(tokens)] = True
    return ids, mask


def solution_loss(tunable, ids, mask, reduction: str = "mean"):
    """Cross-entropy of each solution token given everything before it (position t predicts token t+1), the
    mean or the sum over solution tokens. The LM head sees only the positions that predict one."""
    import torch.nn.functional as F

    hidden = tunable.hidden(ids)[:, :-1][mask[:, 1:]]
    return F.cross_entropy(tunable.lm_head(hidden[None])[0].float(), ids[:, 1:][mask[:, 1:]], reduction=reduction)


class Tunable:
    """A backend's model with a trainable soft prompt: `hidden(ids)`, `lm_head`, `params`, `export()`.

    The backend attaches the prompt (`backend.trainable`: Petals' PTuneMixin embeddings through the swarm, PEFT
    locally) and returns its parameters in Petals' layout (prompts [N, hidden], then for deep_ptune the
    intermediate prompts [N, layers * hidden]) with a function from ids to the final hidden states of the real
    tokens; the client's LM head turns those into logits."""

    def __init__(self, backend, prompt: SoftPrompt):
        self.mode, self.length = prompt.mode, prompt.length
        self.num_layers = backend.model.config.num_hidden_layers
        self.params, self.hidden = backend.trainable(prompt)
        self.lm_head = backend.model.get_output_embeddings()

    def export(self, name: str = "") -> SoftPrompt:
        prompts = self.params[0].detach().clone()
        intermediate = None
        if self.mode == "deep_ptune":
            intermediate = self.params[1].detach().view(self.length, self.num_layers, -1).permute(1, 0, 2).clone()
        return SoftPrompt(self.mode, prompts, intermediate, name)


def training_problems() -> List[Problem]:
    """GSM8K train without the dev problems: dev decides early stopping, and the test split is never read."""
    dev = set(dev_indices())
    return [p for p in load_split("train") if p.idx not in dev]


def rag_context(problems: List[Problem], k: int, template, index=None, cache: Optional[Path] = None) -> dict:
    """Per training or dev problem (by idx), the exemplars `--method rag` would show it: its k nearest
    training problems, never itself, the nearest last, written as `template` writes exemplars (`index`: the
    embedded embedder's, by default).
    `cache` (the run folder's rag_context.json) keeps the retrieved train idx, nearest first: a resume reads
    them rather than querying the index once per problem (7,005 for the committed run), and they record what the
    training saw."""
    from tqdm import tqdm

    from .methods.rag import exemplars
    from .results import write_json
    from .retrieval import open_index

    if cache is not None and cache.exists():
        try:
            nearest = {int(idx): ids for idx, ids in json.loads(cache.read_text()).items()}
        except ValueError as e:
            raise UserError(f"{cache}: unreadable ({one_line(e)}); delete it to retrieve the exemplars again") from None
    else:
        index = index or open_index("all-minilm-l6-v2")
        nearest = {p.idx: [n.idx for n in index.query(p.question, k, exclude_idx=p.idx)]
                   for p in tqdm(problems, desc="retrieving exemplars", unit="problem", dynamic_ncols=True)}
        if cache is not None:
            write_json(cache, nearest)
    train = {p.idx: p for p in load_split("train")}
    return {idx: exemplars([train[i] for i in reversed(ids)], template) for idx, ids in nearest.items()}


def folder_name(config: TuningConfig) -> str:
    """The soft prompt's folder under --output-dir (evaluation runs are named by results.run_name): the name
    `--soft-prompt prompt_tuning/<folder>` and the study's arms refer to."""
    from .results import model_short

    rag = f"__rag{config.rag_k}" if config.context == "rag" else ""
    own = "__own" if config.target == "own" else ""
    prompt = "" if config.prompt == ("rag_cot" if rag else "qa_zeroshot") else f"__{config.prompt}"  # e.g. a chat prompt
    return config.name or (f"{config.tuning_mode}__{config.backend}__{model_short(config.model)}__v{config.num_virtual_tokens}"
                           f"__s{config.seed}{rag}{own}{prompt}")


def batch_order(n_examples: int, batch_size: int, step: int, seed: int) -> List[int]:
    """Example indices of a step: epoch e is a seeded shuffle, so step k's batch never depends on a restart."""
    per_epoch = n_examples // batch_size
    epoch, k = divmod(step, per_epoch)
    order = list(range(n_examples))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[k * batch_size:(k + 1) * batch_size]


def dev_loss(tunable: Tunable, examples, pad_id: int, batch_size: int) -> float:
    """Solution-token loss over the dev examples (token-weighted, so batch boundaries do not matter)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            ids, mask = make_batch(examples[i:i + batch_size], pad_id)
            total += solution_loss(tunable, ids, mask, reduction="sum").item()
            count += int(mask[:, 1:].sum())
    return total / count


def train(config: TuningConfig) -> Path:
    """Train (or resume) a soft prompt; returns its run folder. Test problems are never read."""
    from tqdm import tqdm

    from .backends import open_backend
    from .config import CACHE_DIR
    from .convert import resolve_model

    name = folder_name(config)
    folder = Path(config.output_dir) / name
    model_path = resolve_model(config.model)
    template = load_prompt(config.prompt, model_path)
    check_slots(template, config.prompt, {"exemplars", "question"} if config.context == "rag" else {"question"},
                f"--context {config.context}")
    meta = {**as_dict(config), "name": name, "prompt_hash": prompt_hash(template)}
    train_problems, dev_problems = training_problems(), load_split("dev")
    own = {}
    if config.target == "own":
        own, path = own_solutions(config.model, config.prompt)
        meta["own_solutions"] = str(path)
        train_problems = [p for p in train_problems if p.idx in own]
        dev_problems = [p for p in dev_problems if p.idx in own]
        if not train_problems or not dev_problems:
            raise UserError(f"--target own: {path} solves {len(train_problems)} training and {len(dev_problems)} dev "
                            f"problems; it needs at least one of each")
    dev_problems = dev_problems[:config.dev_limit]
    checkpoint = _read_checkpoint(folder, meta)
    if checkpoint is not None and checkpoint["step"] >= config.steps:  # a queue's rerun: no swarm to start
        print(f"{folder} has all {config.steps} steps already", file=sys.stderr)
        return folder
    folder.mkdir(parents=True, exist_ok=True)

    context = (rag_context(train_problems + dev_problems, config.rag_k, template, cache=folder / CONTEXT_FILE)
               if config.context == "rag" else {})
    with open_backend(config.backend, model_path, config.initial_peers, config.dht_prefix, config.num_servers,
                      CACHE_DIR / "swarm" / name, device=config.device, dtype=config.dtype) as backend:
        encode = lambda p: encode_example(p, template, backend.tokenizer, config.max_length,  # noqa: E731
                                          context.get(p.idx), own.get(p.idx))
        run = _Training(config, backend, folder, meta, checkpoint)
        run.record_provenance(model_path, len(train_problems))
        dev_examples = [encode(p) for p in dev_problems]
        if all(n_prompt >= len(ids) for ids, n_prompt in dev_examples):
            raise UserError(f"--max-length {config.max_length}: the prompt alone ({config.prompt}) fills it, so no "
                            f"solution token is left to learn; raise --max-length")
        if eval_due(run.step, config) and run.step not in run.log.evaluated_before:  # stopped in its evaluation
            run.evaluate(dev_examples)
        bar = tqdm(range(run.step, config.steps), initial=run.step, total=config.steps, desc=name, unit="step",
                   dynamic_ncols=True)
        try:
            for step in bar:
                batch = [encode(train_problems[i])
                         for i in batch_order(len(train_problems), config.batch_size, step, config.seed)]
                loss = run.train_step(batch)
                if eval_due(run.step, config):
                    run.evaluate(dev_examples)
                bar.set_postfix(loss=f"{loss:.3f}", dev=f"{run.best['dev_loss']:.3f}@{run.best['step']}")
        finally:  # Ctrl-C too: the steps done so far are kept
            run.close()
    return folder


def eval_due(step: int, config: TuningConfig) -> bool:
    """Whether the dev loss is measured after this step: at the start, every eval_every steps, and at the end."""
    return step % config.eval_every == 0 or step == config.steps


class _Training:
    """One soft prompt's training state: the prompt and its optimizer, the step reached, the best dev loss;
    started fresh or from the run folder's checkpoint, and written back to that folder."""

    def __init__(self, config: TuningConfig, backend, folder: Path, meta: dict, checkpoint: Optional[dict]):
        import torch

        self.config, self.folder, self.meta, self.name = config, folder, meta, meta["name"]
        self.pad_id = backend.tokenizer.eos_token_id
        self.micro_batch_size = config.micro_batch_size
        self.through_swarm = backend.remote
        if checkpoint is None:
            torch.manual_seed(config.seed)
            prompt = init_soft_prompt(backend.tokenizer, backend.model.get_input_embeddings(), config.tuning_mode,
                                      config.num_virtual_tokens, config.init_text,
                                      backend.model.config.num_hidden_layers)
        else:
            prompt = checkpoint["prompt"]
        self.tunable = Tunable(backend, prompt)
        self.optimizer = torch.optim.AdamW(self.tunable.params, lr=config.lr, weight_decay=0.0)
        self.step, self.best = 0, {"step": None, "dev_loss": float("inf")}
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.step, self.best = checkpoint["step"], checkpoint["best"]
            print(f"resuming {folder} at step {self.step} of {config.steps}", file=sys.stderr)
        self.log = _TrainLog(folder / LOG_FILE, keep_until=self.step)

    def record_provenance(self, model_path, n_train: int) -> None:
        """config.json: the settings, the model, every commit that ran steps (in order), the best so far."""
        from .results import process_commit, write_json

        path = self.folder / CONFIG_FILE
        old = json.loads(path.read_text()) if path.exists() else {}
        commits, commit = old.get("commits", []), process_commit()
        if self.step < self.config.steps and commit not in commits:
            commits.append(commit)
        self.info = {**self.meta, "commits": commits, "model_path": str(model_path), "n_train": n_train}
        write_json(path, {**self.info, "best": self.best})

    def train_step(self, batch) -> float:
        """One optimizer step on a batch of encoded examples, logged; returns its loss."""
        t0 = time.perf_counter()
        size = self.micro_batch_size
        parts = [make_batch(batch[i:i + size], self.pad_id) for i in range(0, len(batch), size)]
        n_tokens = sum(int(mask[:, 1:].sum()) for _, mask in parts)

        def forward_backward() -> float:
            self.optimizer.zero_grad()
            loss = 0.0
            for ids, mask in parts:  # each part's share of the step's mean, so the gradients add up to it
                part = solution_loss(self.tunable, ids, mask, reduction="sum") / n_tokens
                part.backward()
                loss += part.item()
            return loss

        loss = (retry_swarm_step(forward_backward, self.step + 1) if self.through_swarm
                else forward_backward())
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in self.tunable.params))
        with _signals_deferred():  # the prompt, the step and its log row change together
            self.optimizer.step()
            self.step += 1
            self.log.write({"step": self.step, "loss": round(loss, 5), "grad_norm": round(grad_norm, 5),
                            "tokens": n_tokens, "seconds": round(time.perf_counter() - t0, 3)})
        return loss

    def evaluate(self, dev_examples) -> None:
        """Dev loss now; the prompt is saved when it is the best so far (early stopping), then a checkpoint."""
        loss = round(dev_loss(self.tunable, dev_examples, self.pad_id, self.micro_batch_size), 5)
        with _signals_deferred():  # a logged dev loss is never missing from the best or the checkpoint
            self.log.write({"step": self.step, "dev_loss": loss})
            if loss < self.best["dev_loss"]:
                self.best = {"step": self.step, "dev_loss": loss}
                save_soft_prompt(self.tunable.export(self.name), self.folder)
            self.checkpoint()

    def checkpoint(self) -> None:
        _write_checkpoint(self.folder, self.meta, self.step, self.tunable.export(self.name), self.optimizer,
                          self.best)

    def close(self) -> None:
        from .results import write_json

        self.checkpoint()
        self.log.close()
        write_json(self.folder / CONFIG_FILE, {**self.info, "best": self.best})


def retry_swarm_step(forward_backward, step: int, tries: int = SWARM_STEP_TRIES):
    """A step's forward and backward through the swarm, tried again from the start when the swarm fails it.
    Why: Petals retries a failed request, but not every failure is one: once in the study model's first 40
    deep_ptune steps the backward returned the prompt gradients of one 12-block span of two (a RuntimeError
    from autograd), and that step went through when run again. A try starts from the same prompt (the optimizer
    has not stepped), so the step is the one an unfailing swarm gives; when every try fails, one line says so,
    and the steps done are kept (the caller's checkpoint) for a rerun to resume."""
    from .backends import BackendError

    for attempt in range(1, tries + 1):
        try:
            return forward_backward()
        except Exception as e:
            detail = one_line(e)
            if attempt == tries:
                raise BackendError(f"training step {step}: the swarm failed it {tries} times ({detail}); the "
                                   f"steps before it are saved, rerun the same command to resume") from e
            print(f"training step {step}: the swarm failed it ({detail}); trying it again", file=sys.stderr)


@contextmanager
def _signals_deferred():
    """Ctrl-C and SIGTERM (a KeyboardInterrupt here, see __main__) wait until the block ends. A step stopped
    between the optimizer's update and the step count would checkpoint the updated prompt under the old step, and
    the resumed run would take that step twice; a dev loss logged but not yet in `best` would never be evaluated
    again (the resume skips logged steps), so its prompt could be lost."""
    caught = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])  # now, through the handler it was meant for


def _write_checkpoint(folder: Path, meta: dict, step: int, prompt: SoftPrompt, optimizer, best: dict) -> None:
    import torch

    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save({"meta": meta, "step": step, "prompt": prompt, "optimizer": optimizer.state_dict(),
                "best": best}, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)


def _read_checkpoint(folder: Path, meta: dict) -> Optional[dict]:
    """The last checkpoint of this run, if any; a run made with other settings is refused, not overwritten."""
    import torch

    path = folder / CHECKPOINT_FILE
    if not path.exists():
        if (folder / SOFT_PROMPT_FILE).exists():
            raise UserError(f"{folder} holds a soft prompt but no {CHECKPOINT_FILE}: use another --name")
        return None
    try:
        checkpoint = torch.load(path, weights_only=False)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start over") from None
    free = ("steps", "eval_every", "initial_peers", "dht_prefix", "num_servers",  # may change between sessions
            "micro_batch_size")
    defaults = {f.name: f.default for f in dataclasses.fields(TuningConfig)}  # a setting added since it was saved
    changed = {k for k in meta if k not in free and checkpoint["meta"].get(k, defaults.get(k)) != meta[k]}
    if changed:
        raise UserError(f"{folder} was trained with other settings ({', '.join(sorted(changed))}); "
                        f"use another --name or --output-dir")
    return checkpoint


class _TrainLog:
    """`train_log.jsonl`, cut back to the checkpoint's step on resume so every step appears once."""

    def __init__(self, path: Path, keep_until: int):
        rows = [r for r in read_train_log(path.parent) if r["step"] <= keep_until] if path.exists() else []
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.evaluated_before = {r["step"] for r in rows if "dev_loss" in r}  # the kept rows' dev-loss steps
        self._file = open(path, "a")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def nearest_tokens(prompt: SoftPrompt, embeddings, tokenizer, k: int = 3) -> List[List[Tuple[str, float]]]:
    """For each virtual token, the k vocabulary tokens whose input embeddings are closest in cosine: how far
    training moved the prompt from words (an init text shows up as itself at step 0)."""
    import torch.nn.functional as F

    sims = F.normalize(prompt.prompts.float(), dim=-1) @ F.normalize(embeddings.float(), dim=-1).T
    values, ids = sims.topk(k, dim=-1)
    return [[(tokenizer.decode([i]), round(v, 3)) for i, v in zip(row_ids.tolist(), row_vals.tolist())]
            for row_ids, row_vals in zip(ids, values)]


def read_train_log(folder) -> List[dict]:
    """The rows of a run's `train_log.jsonl`, without a torn last line (a run killed while writing it)."""
    rows = []
    for line in (Path(folder) / LOG_FILE).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
