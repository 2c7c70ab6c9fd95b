"""The local backend's shared-prompt sampler: same tokens as transformers where sampling is deterministic,
and every sampled token allowed by the full model (so cache copying and rows leaving the batch are right)."""
import torch

from gsmswarm.backends import _sample
from gsmswarm.config import GenerationConfig
from gsmswarm.data import load_split
from gsmswarm.prompts import load_prompt, render

NEVER = ("\x00",)  # a stop string that never occurs: fixed-length completions


def _prompt(i=0):
    return render(load_prompt("cot_8shot"), question=load_split("test", i + 1)[i].question)


def test_top_k_1_sampling_equals_greedy(local_backend):
    prompt = _prompt()
    greedy = local_backend.generate(prompt, GenerationConfig(max_new_tokens=12, stop=NEVER))[0]
    sampled = local_backend.generate(prompt, GenerationConfig(max_new_tokens=12, stop=NEVER, temperature=1.0,
                                                              top_k=1, n=3))
    assert [c.token_ids for c in sampled] == [greedy.token_ids] * 3


def test_sampled_tokens_are_in_the_full_models_top_k(local_backend):
    tok, model = local_backend.tokenizer, local_backend.model
    prompt = _prompt(1)
    gen = GenerationConfig(max_new_tokens=40, temperature=1.0, top_k=3, n=4, seed=3, stop=(".", "\n\n"))
    completions = local_backend.generate(prompt, gen)
    assert len({len(c.token_ids) for c in completions}) > 1  # rows left the batch at different steps
    prompt_ids = tok(prompt).input_ids
    for c in completions:
        assert not any(s in c.text for s in gen.stop)
        ids = torch.tensor([prompt_ids + c.token_ids])
        with torch.inference_mode():
            logits = model(ids).logits[0, len(prompt_ids) - 1:-1]
        top3 = logits.topk(3).indices
        assert all(t in row for t, row in zip(c.token_ids, top3.tolist()))


def test_sample_warpers():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(_sample(logits, GenerationConfig(temperature=1.0, top_k=1), g).tolist()) == {2}
    assert set(_sample(logits, GenerationConfig(temperature=1.0, top_p=0.01), g).tolist()) == {2}
    assert set(_sample(logits, GenerationConfig(temperature=1.0, top_k=2), g).tolist()) == {2, 3}
    assert set(_sample(logits, GenerationConfig(temperature=5.0), g).tolist()) == {0, 1, 2, 3}
