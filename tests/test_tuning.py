"""Soft prompts: the loss, batches and files on literal examples; training through a real loopback swarm;
parity of the swarm's first step with PEFT's; the train-prompt CLI with resume; evaluation with a prompt."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli
from gsmswarm.config import GenerationConfig, TuningConfig, UserError
from gsmswarm.data import Problem, dev_indices, load_split
from gsmswarm.prompts import Template, load_prompt
from gsmswarm.results import read_records
from gsmswarm.tuning import (SoftPrompt, Tunable, batch_order, encode_example, init_soft_prompt, load_soft_prompt,
                             make_batch, read_train_log, save_soft_prompt, solution_loss, target_ids,
                             training_problems)

PROBLEM = Problem(0, "Tom has 3 apples and buys 2 more. How many apples does he have?",
                  "He has 3+2=<<3+2=5>>5 apples.\nSo he has 5 in all.\n#### 5", "5")


class _CharTokenizer:
    """Characters as token ids, and -1 as the end of a turn: enough to read what a target holds."""
    eos_token_id = -1

    def __call__(self, text, add_special_tokens=True):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()


def test_target_is_one_paragraph_without_calculator_annotations():
    ids = target_ids(PROBLEM, load_prompt("qa_zeroshot"), _CharTokenizer())
    assert "".join(map(chr, ids)) == " He has 3+2=5 apples. So he has 5 in all. The answer is 5.\n\n"


def test_a_chat_target_is_the_answer_turn_ended_by_the_end_of_turn_token():
    chat = Template("<user>{question}<assistant>")
    chat.chat = True
    ids = target_ids(PROBLEM, chat, _CharTokenizer())
    assert ids[-1] == -1 and "".join(map(chr, ids[:-1])) == "He has 3+2=5 apples. So he has 5 in all. The answer is 5."


def test_an_own_answer_is_the_target_as_the_model_wrote_it_in_either_frame():
    chat = Template("<user>{question}<assistant>")
    chat.chat = True
    own = " 3 plus 2 is 5. The answer is 5.\n"
    assert "".join(map(chr, target_ids(PROBLEM, load_prompt("qa_zeroshot"), _CharTokenizer(), own))) == \
        " 3 plus 2 is 5. The answer is 5.\n\n"
    ids = target_ids(PROBLEM, chat, _CharTokenizer(), own)
    assert ids[-1] == -1 and "".join(map(chr, ids[:-1])) == "3 plus 2 is 5. The answer is 5."


def test_batch_masks_solution_tokens_only_and_pads_on_the_right():
    ids, mask = make_batch([([5, 6, 7, 8], 2), ([9, 10], 1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert mask.tolist() == [[False, False, True, True], [False, True, False, False]]


class _Logits:
    """A tunable whose hidden states are given logits and whose LM head is the identity."""

    def __init__(self, logits):
        self.hidden, self.lm_head = (lambda ids: logits), (lambda h: h)


def test_loss_scores_each_solution_token_from_the_position_before_it():
    ids, mask = make_batch([([1, 2, 3], 2)], pad_id=0)  # one target: token 3, predicted at position 1
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 1, 3] = 0.0  # certain of the target where it must be predicted
    logits[0, 2, 0] = 0.0  # position 2 predicts past the end: must not count
    assert solution_loss(_Logits(logits), ids, mask).item() == pytest.approx(0.0)
    logits[0, 1, 3], logits[0, 1, 2] = -1e4, 0.0  # certain of the wrong token
    assert solution_loss(_Logits(logits), ids, mask).item() > 100


def test_the_lm_head_sees_only_positions_that_predict_a_solution_token():
    ids, mask = make_batch([([1, 2, 3, 1], 2), ([1, 2], 1)], pad_id=0)  # targets: row 0 at 2, 3; row 1 at 1
    seen = []
    tunable = _Logits(torch.zeros(2, 4, 4))
    tunable.lm_head = lambda h: seen.append(h.shape) or h
    loss = solution_loss(tunable, ids, mask, reduction="sum")
    assert seen == [(1, 3, 4)] and loss.item() == pytest.approx(3 * math.log(4))


def test_batches_are_seeded_and_an_epoch_covers_every_example_once():
    order = [i for step in range(5) for i in batch_order(10, 2, step, seed=3)]
    assert sorted(order) == list(range(10))
    assert batch_order(10, 2, 7, seed=3) == batch_order(10, 2, 7, seed=3) != batch_order(10, 2, 7, seed=4)


def test_a_step_the_swarm_fails_is_tried_again_and_a_step_it_keeps_failing_is_one_line(capsys):
    from gsmswarm.backends import BackendError
    from gsmswarm.tuning import retry_swarm_step

    calls = []

    def flaky():  # the failure we saw: autograd refusing the prompt gradients of one span of two
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Function _RemoteSequentialAutogradFunctionBackward returned an invalid gradient")
        return 0.5

    assert retry_swarm_step(flaky, step=40) == 0.5 and len(calls) == 2
    assert "training step 40: the swarm failed it (RuntimeError: Function" in capsys.readouterr().err

    def broken():
        calls.append(1)
        raise RuntimeError("no route\nsecond line")

    calls.clear()
    with pytest.raises(BackendError, match=r"^training step 7: the swarm failed it 3 times \(RuntimeError: no route\); "
                                           r"the steps before it are saved, rerun the same command to resume$"):
        retry_swarm_step(broken, step=7, tries=3)
    assert len(calls) == 3


def test_rag_context_defaults_and_folder_name():
    from gsmswarm.tuning import folder_name

    plain, rag = TuningConfig(), TuningConfig(context="rag", model="qwen2.5-coder-0.5b")
    assert (plain.prompt, plain.max_length) == ("qa_zeroshot", 320)
    assert (rag.prompt, rag.max_length, rag.rag_k) == ("rag_cot", 1800, 8)
    assert (plain.micro_batch_size, rag.micro_batch_size) == (4, 1)
    assert folder_name(plain) == "ptune__petals__smollm2-135m__v16__s0"
    assert folder_name(rag) == "ptune__petals__qwen2.5-coder-0.5b__v16__s0__rag8"


def test_training_problems_exclude_dev():
    dev = set(dev_indices())
    assert len(dev) == 500 and {p.idx for p in load_split("dev")} == dev
    train = training_problems()
    assert len(train) == 7473 - 500 and not {p.idx for p in train} & dev
    test_questions = {p.question for p in load_split("test")}
    assert not any(p.question in test_questions for p in train)


def test_soft_prompt_round_trip_and_bad_files(tmp_path):
    prompt = SoftPrompt("deep_ptune", torch.randn(4, 8), torch.randn(3, 4, 8))
    save_soft_prompt(prompt, tmp_path)
    back = load_soft_prompt(tmp_path)
    assert back.mode == "deep_ptune" and back.name == tmp_path.name and back.sha256() == prompt.sha256()
    assert torch.equal(back.intermediate, prompt.intermediate)
    # Petals' layout: intermediate_prompt_embeddings is [N, layers * hidden], block-major within a row
    flat = prompt.petals_weights()["intermediate_prompt_embeddings.weight"]
    assert torch.equal(flat.view(4, 3, 8)[:, 1], prompt.intermediate[1])
    with pytest.raises(UserError, match="no soft_prompt.safetensors"):
        load_soft_prompt(tmp_path / "missing")
    (tmp_path / "soft_prompt.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable soft prompt"):
        load_soft_prompt(tmp_path)


@pytest.mark.slow
def test_deep_ptune_trains_through_petals_only():
    with pytest.raises(UserError, match="deep_ptune trains through Petals only"):
        TuningConfig(backend="local", tuning_mode="deep_ptune")


def _tiny_batch(tokenizer):
    template = load_prompt("qa_zeroshot")
    return make_batch([encode_example(p, template, tokenizer, 64) for p in load_split("train", 2)],
                      tokenizer.eos_token_id)


def _init(backend, mode):
    return init_soft_prompt(backend.tokenizer, backend.model.get_input_embeddings(), mode, 4,
                            "Solve step by step", backend.model.config.num_hidden_layers)


@pytest.fixture
def fresh_petals(model_path, swarm):
    """A client of its own: a soft prompt changes the model it is set on."""
    from gsmswarm.backends import load_backend

    backend = load_backend("petals", model_path, swarm.initial_peers, swarm.dht_prefix)
    yield backend
    backend.close()


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_swarm_training_changes_only_the_prompt(fresh_petals, mode):
    backend = fresh_petals
    prompt = _init(backend, mode)
    backend.set_soft_prompt(prompt)
    tunable = Tunable(backend, prompt)
    ids, mask = _tiny_batch(backend.tokenizer)
    frozen = {k: v.clone() for k, v in backend.model.state_dict().items() if "prompt_embeddings" not in k}
    probe = torch.randn(1, 5, backend.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks_before = backend.model.transformer.h(probe)  # every block, on the servers, no prompt
    optimizer = torch.optim.AdamW(tunable.params, lr=0.01)
    losses = []
    for _ in range(3):
        loss = solution_loss(tunable, ids, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[1] < losses[0] - 0.01, losses
    trained = tunable.export()
    assert not torch.equal(trained.prompts, prompt.prompts)
    if mode == "deep_ptune":
        assert trained.intermediate.abs().sum() > 0  # started at zero, moved
    assert all(torch.equal(v, frozen[k]) for k, v in backend.model.state_dict().items() if k in frozen)
    with torch.no_grad():
        assert torch.equal(backend.model.transformer.h(probe), blocks_before)


def test_first_step_through_swarm_equals_local_peft(fresh_petals, local_backend):
    """Same init, batch and loss: the swarm's loss and prompt gradient match PEFT's to 1e-5 (measured: 0)."""
    from gsmswarm.backends import load_backend

    ids, mask = _tiny_batch(local_backend.tokenizer)
    prompt = _init(local_backend, "ptune")
    fresh_petals.set_soft_prompt(prompt)
    results = []
    local = load_backend("local", local_backend.model_name)  # PEFT wraps the model: not the shared one
    for backend in (fresh_petals, local):
        tunable = Tunable(backend, prompt)
        loss = solution_loss(tunable, ids, mask)
        loss.backward()
        results.append((loss.item(), tunable.params[0].grad.clone()))
    (swarm_loss, swarm_grad), (peft_loss, peft_grad) = results
    assert swarm_loss == pytest.approx(peft_loss, abs=1e-5)
    assert (swarm_grad - peft_grad).norm() <= 1e-5 * peft_grad.norm()


def test_local_training_logits_are_the_models_own_with_the_prompt_in_front(model_path):
    from gsmswarm.backends import load_backend

    backend = load_backend("local", model_path)
    prompt = _init(backend, "ptune")
    tunable = Tunable(backend, prompt)
    ids, _ = _tiny_batch(backend.tokenizer)
    embeds = backend.model.get_input_embeddings()(ids)
    with torch.no_grad():
        whole = backend.model(inputs_embeds=torch.cat([prompt.prompts.expand(len(ids), -1, -1), embeds], 1)).logits
        assert torch.allclose(tunable.lm_head(tunable.hidden(ids)), whole[:, prompt.length:], atol=1e-4)


def test_micro_batches_give_the_steps_loss_and_gradient(model_path, tmp_path):
    """Rows of different lengths, one pass or one per row: the same step (only the padding differs)."""
    from gsmswarm.backends import load_backend
    from gsmswarm.tuning import _Training

    template, steps = load_prompt("qa_zeroshot"), []
    for micro in (2, 1):
        backend = load_backend("local", model_path)
        config = TuningConfig(backend="local", batch_size=2, micro_batch_size=micro, num_virtual_tokens=4)
        (tmp_path / str(micro)).mkdir()
        run = _Training(config, backend, tmp_path / str(micro), {"name": "run"}, None)
        batch = [encode_example(p, template, backend.tokenizer, 320) for p in load_split("train", 2)]
        assert len(batch[0][0]) != len(batch[1][0])
        steps.append((run.train_step(batch), run.tunable.params[0].grad.clone()))
        run.log.close()
    (whole_loss, whole_grad), (micro_loss, micro_grad) = steps
    assert micro_loss == pytest.approx(whole_loss, abs=1e-5)
    assert (micro_grad - whole_grad).norm() <= 1e-4 * whole_grad.norm()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_an_update_or_a_dev_evaluation_waits_until_its_state_is_whole(local_backend, tmp_path,
                                                                                    monkeypatch, signum):
    """Ctrl-C or SIGTERM right after the optimizer's update: the step is still counted and logged (else the
    checkpoint held the updated prompt under the step before, and the resume took that step twice); right after a
    dev loss is logged: it is still the best and its prompt saved (else the resume, which skips logged steps,
    never saw it again)."""
    from gsmswarm.tuning import SOFT_PROMPT_FILE, _Training

    handlers = {s: signal.signal(s, signal.default_int_handler)  # as __main__ sets them
                for s in (signal.SIGINT, signal.SIGTERM)}
    run = _Training(TuningConfig(backend="local", batch_size=1, num_virtual_tokens=4), local_backend, tmp_path,
                    {"name": "run"}, None)
    batch = [encode_example(p, load_prompt("qa_zeroshot"), local_backend.tokenizer, 320)
             for p in load_split("train", 1)]
    try:
        def then_signal(method):
            return lambda *args, **kwargs: (method(*args, **kwargs), signal.raise_signal(signum))[0]

        monkeypatch.setattr(run.optimizer, "step", then_signal(run.optimizer.step))
        with pytest.raises(KeyboardInterrupt):
            run.train_step(batch)
        assert run.step == 1 and [r["step"] for r in read_train_log(tmp_path)] == [1]
        monkeypatch.setattr(run.log, "write", then_signal(run.log.write))
        with pytest.raises(KeyboardInterrupt):
            run.evaluate(batch)
        assert run.best["step"] == 1 and (tmp_path / SOFT_PROMPT_FILE).exists()
    finally:
        run.log.close()
        for s, handler in handlers.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_generation_with_a_soft_prompt_is_the_same_locally_and_through_the_swarm(fresh_petals, model_path, mode):
    from gsmswarm.backends import load_backend

    local = load_backend("local", model_path)
    prompt = _init(local, mode)
    if mode == "deep_ptune":
        prompt.intermediate.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    question = "Q: " + load_split("test", 1)[0].question + "\nA:"
    gen = GenerationConfig(max_new_tokens=16)
    plain = local.generate(question, gen)[0].token_ids
    local.set_soft_prompt(prompt)
    fresh_petals.set_soft_prompt(prompt)
    tuned = local.generate(question, gen)[0].token_ids
    assert tuned != plain  # the prompt is really in front
    assert fresh_petals.generate(question, gen)[0].token_ids == tuned
    sampled = GenerationConfig(max_new_tokens=8, temperature=0.7, n=2, top_k=1)  # the shared-prompt path
    assert local.generate(question, sampled)[0].token_ids == tuned[:8]


TRAIN = ["train-prompt", "--num-virtual-tokens", "4", "--batch-size", "2", "--max-length", "64",
         "--dev-limit", "2", "--eval-every", "2", "--lr", "0.05"]


def test_train_prompt_cli_resumes_and_the_prompt_evaluates(swarm, tmp_path):
    out = tmp_path / "pt"
    args = [*TRAIN, "--backend", "petals", "--initial-peers", *swarm.initial_peers, "--output-dir", str(out),
            "--name", "run"]
    proc = subprocess.Popen([sys.executable, "-m", "gsmswarm", *args, "--steps", "40"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoint, deadline = out / "run" / "checkpoint.pt", time.monotonic() + 300
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=False)["step"] >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler sends; Ctrl-C (SIGINT) takes the same path
    assert proc.wait(timeout=120) == 130 and "rerun the same command to resume" in proc.stderr.read()
    stopped = torch.load(checkpoint, weights_only=False)["step"]
    assert 2 <= stopped < 40
    log_path = out / "run" / "train_log.jsonl"  # as if stopped inside the evaluation at its last step
    log_path.write_text("".join(json.dumps(r) + "\n" for r in read_train_log(out / "run")
                                if not ("dev_loss" in r and r["step"] == stopped)))

    done = cli(*args, "--steps", str(stopped + 2))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out / 'run'} at step {stopped}" in done.stderr
    log = read_train_log(out / "run")
    assert [r["step"] for r in log if "loss" in r] == list(range(1, stopped + 3))  # every step once
    assert [r["step"] for r in log if "dev_loss" in r] == sorted({*range(0, stopped + 3, 2), stopped + 2})
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["tuning_mode"] == "ptune" and config["best"]["step"] is not None

    rerun = cli(*args, "--steps", str(stopped + 2))  # finished: says so, starts nothing, changes nothing
    assert rerun.returncode == 0 and f"has all {stopped + 2} steps already" in rerun.stderr
    assert read_train_log(out / "run") == log

    again = cli(*args, "--steps", str(stopped + 2), "--lr", "0.1")
    assert again.returncode == 2 and "other settings (lr)" in again.stderr

    results = tmp_path / "results"
    run = cli("run", "--prompt", "qa_zeroshot", "--soft-prompt", str(out / "run"), "--limit", "1",
              "--max-new-tokens", "8", "--output-dir", str(results), "--initial-peers", *swarm.initial_peers)
    assert run.returncode == 0, run.stderr[-2000:]
    [record] = read_records(results / "cot" / "cot__petals__smollm2-135m__qa_zeroshot+run__test__n1__t0__s0.jsonl")
    assert record["soft_prompt"]["path"] == str(out / "run") and record["soft_prompt"]["length"] == 4
    assert record["soft_prompt"]["sha256"] == load_soft_prompt(out / "run").sha256()


@pytest.mark.slow
def test_local_peft_training_cli(tmp_path):
    done = cli(*TRAIN, "--backend", "local", "--steps", "2", "--output-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "ptune__local__smollm2-135m__v4__s0"
    assert load_soft_prompt(folder).prompts.shape == (4, 576)
    log = read_train_log(folder)
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and [r["step"] for r in log if "dev_loss" in r] == [0, 2]


def test_a_chat_prompt_trains_in_the_models_format_into_a_folder_of_its_own(tmp_path, model_path):
    """The soft prompt learns to answer in the chat template's assistant turn: training starts from the rendered
    chat prompt, and the prompt's name keeps it apart from the plain frame's prompt of the same seed."""
    from transformers import AutoTokenizer

    from gsmswarm.prompts import render

    short = cli(*TRAIN, "--backend", "local", "--steps", "1", "--prompt", "chat_zeroshot", "--output-dir", str(tmp_path))
    assert short.returncode == 2 and "--max-length 64: the prompt alone (chat_zeroshot) fills it" in short.stderr
    done = cli(*TRAIN, "--backend", "local", "--steps", "1", "--prompt", "chat_zeroshot", "--max-length", "256",
               "--output-dir", str(tmp_path / "long"))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "long" / "ptune__local__smollm2-135m__v4__s0__chat_zeroshot"
    assert [r["step"] for r in read_train_log(folder) if "loss" in r] == [1]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = load_prompt("chat_zeroshot", model_path)
    ids, n_prompt = encode_example(PROBLEM, template, tokenizer, 10_000)
    assert tokenizer.decode(ids[:n_prompt]) == render(template, question=PROBLEM.question)
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[n_prompt:-1]).startswith("He has 3+2=5 apples.")


def test_own_target_trains_on_the_answers_a_fixed_run_got_right(tmp_path, monkeypatch, model_path):
    """Self-distillation: the soft prompt learns the model's own answers from one committed run, only those graded
    correct and not cut by the token limit; the dev problems among them give the dev loss; a run not finished is
    one line naming the command that finishes it."""
    from transformers import AutoTokenizer

    from gsmswarm import tuning
    from gsmswarm.results import records_path

    monkeypatch.setitem(tuning.OWN_SOLUTIONS, "output_dir", str(tmp_path / "answers"))
    monkeypatch.setitem(tuning.OWN_SOLUTIONS, "limit", 100)
    config = TuningConfig(backend="local", target="own", num_virtual_tokens=4, batch_size=2, steps=1, eval_every=1,
                          dev_limit=2, max_length=96, output_dir=str(tmp_path / "pt"))
    path = records_path(*tuning.own_solutions_run(config.model, config.prompt))
    path.parent.mkdir(parents=True)
    problems = load_split("train", 100)
    with open(path, "w") as f:  # 99 of the 100 problems so far
        for p in problems[:99]:
            f.write(json.dumps({"idx": p.idx, "completions": [f" own answer {p.idx}. The answer is {p.gold}."],
                                "correct": p.idx % 3 == 0 or p.idx in (14, 92), "truncated": [p.idx == 30],
                                "error": None}) + "\n")
    with pytest.raises(UserError, match="holds 99 of its 100 answers; make them first.*run --method cot"):
        tuning.train(config)
    with open(path, "a") as f:
        f.write(json.dumps({"idx": 99, "completions": ["x"], "correct": True, "truncated": [False], "error": None}) + "\n")

    own, found = tuning.own_solutions(config.model, config.prompt)
    assert found == path and 30 not in own and 31 not in own and own[14] == " own answer 14. The answer is 5."
    folder = tuning.train(config)
    assert folder.name == "ptune__local__smollm2-135m__v4__s0__own"
    saved = json.loads((folder / "config.json").read_text())
    dev = set(dev_indices())
    assert saved["own_solutions"] == str(path) and saved["n_train"] == len([i for i in own if i not in dev])
    assert [r["step"] for r in read_train_log(folder) if "loss" in r] == [1]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids, n_prompt = encode_example(problems[14], load_prompt("qa_zeroshot"), tokenizer, 96, solution=own[14])
    assert tokenizer.decode(ids[n_prompt:]) == " own answer 14. The answer is 5.\n\n"


@pytest.mark.parametrize("args, needle", [
    (["train-prompt", "--backend", "local", "--tuning-mode", "deep_ptune"], "trains through Petals only"),
    (["train-prompt", "--lr", "0"], "--lr must be > 0"),
    (["run", "--soft-prompt", "/nonexistent"], "--soft-prompt /nonexistent: no soft_prompt.safetensors"),
    (["train-prompt", "--context", "docs"], "--context must be none or rag"),
    (["train-prompt", "--context", "rag", "--prompt", "qa_zeroshot"], "--context rag fills ['exemplars', 'question']"),
    (["train-prompt", "--rag-k", "0"], "--rag-k must be >= 1"),
    (["train-prompt", "--target", "mine"], "--target must be reference or own"),
    (["train-prompt", "--target", "own", "--context", "rag"], "use it with --context none"),
])
def test_bad_tuning_input_gives_one_line(args, needle):
    done = cli(*args)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_nearest_tokens_of_a_text_init_are_the_text(local_backend):
    from gsmswarm.tuning import nearest_tokens

    tok, embeddings = local_backend.tokenizer, local_backend.model.get_input_embeddings()
    ids = tok(" apples and oranges", add_special_tokens=False).input_ids
    prompt = init_soft_prompt(tok, embeddings, "ptune", len(ids), " apples and oranges", 30)
    nearest = nearest_tokens(prompt, embeddings.weight, tok)
    assert [row[0] for row in nearest] == [(tok.decode([i]), 1.0) for i in ids]
