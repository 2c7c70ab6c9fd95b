"""The embedded model is the real SmolLM2 converted from GGUF: check the conversion, not just that it loads."""
import math

from gsmswarm.convert import GGUF_SHA256, embedded_gguf_path, sha256_file
from gsmswarm.data import load_split


def test_gguf_is_the_pinned_file():
    assert sha256_file(embedded_gguf_path()) == GGUF_SHA256


def test_tokenizer_round_trips_and_splits_digits(local_backend):
    tok = local_backend.tokenizer
    for p in load_split("train", limit=50):
        assert tok.decode(tok(p.answer).input_ids) == p.answer
    assert tok.tokenize(" 2125") == ["Ġ", "2", "1", "2", "5"]
    assert tok.eos_token == "<|im_end|>" or tok.eos_token_id == 2


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
