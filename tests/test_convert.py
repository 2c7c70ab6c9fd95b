"""The embedded model is the real SmolLM2 converted from GGUF: check the conversion, not just that it loads."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gsmswarm.config import UserError
from gsmswarm.convert import EMBEDDED_MODEL, MODELS, convert_gguf, gguf_path, sha256_file
from gsmswarm.data import load_split


def test_gguf_is_the_pinned_file():
    assert sha256_file(gguf_path(EMBEDDED_MODEL)) == MODELS[EMBEDDED_MODEL].sha256


def test_tokenizer_round_trips_and_splits_digits(local_backend):
    tok = local_backend.tokenizer
    for p in load_split("train", limit=50):
        assert tok.decode(tok(p.answer).input_ids) == p.answer
    assert tok.tokenize(" 2125") == ["Ġ", "2", "1", "2", "5"]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)


def test_greedy_knows_paris(local_backend):
    from gsmswarm.config import GenerationConfig

    out = local_backend.generate("The capital of France is", GenerationConfig(max_new_tokens=4))[0]
    assert "Paris" in out.text


def test_loss_on_gsm8k_far_below_random(local_backend):
    """A wrong permutation or dequantisation leaves the model near chance (ln 49152 = 10.8 nats)."""
    import torch

    tok, model = local_backend.tokenizer, local_backend.model
    losses = []
    with torch.inference_mode():
        for p in load_split("train", limit=50):
            ids = tok(p.question + "\n" + p.answer, return_tensors="pt").input_ids
            losses.append(model(ids, labels=ids).loss.item())
    mean = sum(losses) / len(losses)
    assert mean < 0.3 * math.log(len(tok))


# qwen2 (the study model's architecture) as a Llama: checked against transformers' own Qwen2ForCausalLM,
# whose outputs tests/fixtures/qwen2/make_fixtures.py stored once (transformers 4.34 has no Qwen2 class).
QWEN2 = Path(__file__).parent / "fixtures" / "qwen2"


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> str:
    gguf_file = QWEN2 / "tiny-qwen2.gguf"
    out = tmp_path_factory.mktemp("convert") / "tiny-qwen2"
    convert_gguf(gguf_file, out, sha256_file(gguf_file))
    return str(out)


def _reference(name: str):
    ref = json.loads((QWEN2 / f"{name}-reference.json").read_text())
    logits = np.load(QWEN2 / f"{name}-reference.npz")
    return ref, [logits[f"logits{i}"] for i in range(len(ref["texts"]))]


@pytest.mark.slow
def test_qwen2_converts_to_a_llama_with_the_reference_tokens_and_logits(tiny_qwen2):
    """Fails if the biases, rope_theta (top level), the untied output or the qwen2 pre-tokenizer were wrong."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref, logits = _reference("tiny-qwen2")
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, torch_dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.rope_theta == 1e6
    for text, ids, expected in zip(ref["texts"], ref["ids"], logits):
        assert tok(text, add_special_tokens=False).input_ids == ids
        assert tok.decode(ids) == text
        with torch.inference_mode():
            got = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_converted_tokenizers_feed_generate_as_they_are(local_backend, tiny_qwen2):
    """The plain Hugging Face idiom `model.generate(**tokenizer(text))` works on both kinds of converted
    folder: the tokenizer returns only what Llama takes (before v3 it added token_type_ids, which raised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (local_backend.model_name, tiny_qwen2):
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        inputs = tok("The capital of France is", return_tensors="pt")
        assert set(inputs) == {"input_ids", "attention_mask"}
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.swarm
@pytest.mark.slow
def test_qwen2_served_by_a_loopback_swarm_gives_the_reference_logits(tiny_qwen2, tmp_path):
    import torch

    from gsmswarm.backends import load_backend
    from gsmswarm.swarm import LoopbackSwarm

    ref, logits = _reference("tiny-qwen2")
    with LoopbackSwarm(tiny_qwen2, tmp_path / "swarm", num_servers=2) as swarm:
        backend = load_backend("petals", tiny_qwen2, swarm.initial_peers, swarm.dht_prefix)
        try:
            with torch.inference_mode():
                got = [backend.model(torch.tensor([ids])).logits[0].numpy() for ids in ref["ids"]]
        finally:
            backend.close()
    for g, expected in zip(got, logits):
        np.testing.assert_allclose(g, expected, rtol=0, atol=1e-4)


def test_a_gguf_that_does_not_match_its_pin_is_refused(tmp_path, monkeypatch):
    import gsmswarm.convert as convert

    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(b"not a model %d" % i)
    monkeypatch.setattr(convert, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setitem(convert.MODELS, "fake", convert.GGUFModel((("a", "x"), ("b", "y")), "0" * 64, "bash x.sh"))
    monkeypatch.setattr(convert.GGUFModel, "files", lambda self, name: parts)
    with pytest.raises(UserError, match=r"--model fake: .*fake.gguf has sha256 [0-9a-f]{64}, not the pinned 0{64}"):
        convert.gguf_path("fake")
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-verified is left to be trusted


def test_a_named_model_that_is_not_installed_names_the_install_command():
    from gsmswarm.convert import GGUFModel

    with pytest.raises(UserError, match=r"package no_such_pkg is not installed; run `bash install.sh --model m`"):
        GGUFModel((("no_such_pkg", "x.bin"),), "0" * 64, "bash install.sh --model m").files("m")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_study_model_matches_transformers_qwen2_on_its_top_logits(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsmswarm.convert import ensure_model

    if importlib.util.find_spec(MODELS[name].parts[0][0]) is None:
        pytest.skip(f"the model is an optional install: {MODELS[name].install}")
    ref = json.loads((QWEN2 / f"{name}-reference.json").read_text())
    path = ensure_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    for i, text in enumerate(ref["texts"]):
        assert tok(text, add_special_tokens=False).input_ids == ref["ids"][i]
        with torch.inference_mode():
            got = model(torch.tensor([ref["ids"][i]])).logits[0]
        top_ids = torch.tensor(ref["top_ids"][i])
        assert (got.argmax(-1) == top_ids[:, 0]).all()
        np.testing.assert_allclose(got.gather(-1, top_ids).numpy(), ref["top_logits"][i], rtol=0, atol=1e-3)
        np.testing.assert_allclose(torch.logsumexp(got, -1).numpy(), ref["logsumexp"][i], rtol=0, atol=1e-3)
