"""The local backend's sampling and prefix reuse: same tokens as transformers where sampling is deterministic,
every sampled token allowed by the full model (so cache copying and rows leaving the batch are right), and
greedy tokens from a reused prefix equal to a fresh encoding; the Petals client's retry settings."""
import pytest
import torch

from gsmswarm.backends import load_backend, sample
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
    assert set(sample(logits, GenerationConfig(temperature=1.0, top_k=1), g).tolist()) == {2}
    assert set(sample(logits, GenerationConfig(temperature=1.0, top_p=0.01), g).tolist()) == {2}
    assert set(sample(logits, GenerationConfig(temperature=1.0, top_k=2), g).tolist()) == {2, 3}
    assert set(sample(logits, GenerationConfig(temperature=5.0), g).tolist()) == {0, 1, 2, 3}


def test_greedy_from_a_known_prefix_gives_the_tokens_of_a_fresh_encoding(model_path):
    """A row starts from the longest prefix whose keys are known (the first prompt's exemplars for the next
    problem, its own slot's tokens for the calculator's prompt after a pause): the tokens transformers gives
    when it encodes everything anew, with the shared tokens encoded once."""
    first = _prompt(0)
    prompts = [first, _prompt(1), first + " She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs left"]  # as after a pause
    gen = GenerationConfig(max_new_tokens=24, stop=NEVER)
    backend = load_backend("local", model_path)  # nothing known yet
    tok, model = backend.tokenizer, backend.model
    encoded = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: encoded.append(args[0].numel()))
    try:
        got = [backend.generate(p, gen)[0].token_ids for p in prompts]
    finally:
        hook.remove()
    for p, ids in zip(prompts, got):
        x = tok(p, return_tensors="pt").input_ids
        with torch.inference_mode():
            want = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                  pad_token_id=tok.eos_token_id)[0, x.shape[1]:].tolist()
        assert ids == want
    ids = [tok(p).input_ids for p in prompts]
    exemplars = next(i for i, (a, b) in enumerate(zip(ids[0], ids[1])) if a != b)
    decoded = 3 * 23  # each generated token but the last is fed back once
    assert sum(encoded) - decoded == sum(map(len, ids)) - exemplars - (len(ids[0]) - 1)


def test_petals_retry_warnings_are_one_short_line_each(caplog):
    """A retry's warning carries the server's whole traceback in the exception text, and errors without text
    add a traceback record: through the filter each retry is one line and the traceback record is gone."""
    import logging

    from gsmswarm.backends.petals import RETRY_LOGGERS, OneLineRetries

    log = logging.getLogger(RETRY_LOGGERS[0])
    log.addFilter(OneLineRetries())
    try:
        remote = repr(RuntimeError("Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n' * 10 + "OSError"))
        with caplog.at_level(logging.WARNING):
            log.warning(f"Caught exception when running inference via span 0:15 (retry in 1 sec): {remote}")
            try:
                raise TimeoutError()
            except TimeoutError:
                log.warning("See detailed traceback below:", exc_info=True)
        [record] = caplog.records
        assert record.getMessage().startswith("Caught exception when running inference via span 0:15 (retry in 1 sec)")
        assert len(record.getMessage()) == 203 and record.getMessage().endswith("...")
        assert record.exc_info is None and "\n" not in caplog.text.strip()
        caplog.clear()
        span = ("RemoteSpanInfo(peer_id=<libp2p.peer.id.ID (12D3KooWHsgptvdSF5edUUUq5kJ7JuDP5B22EKe9L6tzNw3Ge9Rc)>, "
                "start=0, end=12, server_info=ServerInfo(state=<ServerState.ONLINE: 2>, throughput=1.0, "
                "start_block=0, end_block=12, public_name=None, version='2.3.0.dev2', network_rps=None, "
                "forward_rps=None, inference_rps=None, adapters=(), torch_dtype='float32', quant_type='none', "
                "using_relay=False, cache_tokens_left=1966080, next_pings={'12D3KooWK3HK': 0.001}))")
        with caplog.at_level(logging.WARNING):
            log.warning(f"Caught exception when running inference via {span} (retry in 1 sec): TimeoutError()")
        assert caplog.records[0].getMessage() == ("Caught exception when running inference via blocks 0:12 at "
                                                  "...3Ge9Rc (retry in 1 sec): TimeoutError()")
    finally:
        log.filters[:] = [f for f in log.filters if not isinstance(f, OneLineRetries)]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_bad_request_timeout_is_one_line_naming_the_variable(monkeypatch, value):
    from gsmswarm.backends.petals import _client_options
    from gsmswarm.config import UserError

    monkeypatch.setenv("GSMSWARM_REQUEST_TIMEOUT", value)
    with pytest.raises(UserError, match=r"^\$GSMSWARM_REQUEST_TIMEOUT="):
        _client_options()
    monkeypatch.setenv("GSMSWARM_REQUEST_TIMEOUT", "12.5")
    assert _client_options()["request_timeout"] == 12.5
    monkeypatch.delenv("GSMSWARM_REQUEST_TIMEOUT")
    assert _client_options()["request_timeout"] == 300
