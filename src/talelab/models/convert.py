"""Import and export llama2.c checkpoints; export talelab models to Hugging Face Llama directories."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from talelab.config import ModelConfig
from talelab.errors import ConfigError, InputError
from talelab.atomic import atomic_directory, atomic_file
from talelab.models.storage import check_vocabulary, load_model, save_model
from talelab.models.transformer import Transformer
from talelab.paths import resolve_input
from talelab.tokenizer import Tokenizer, load_tokenizer

LLAMA2C_HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def meta_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from Meta's interleaved RoPE pairs to the rotate-half layout (as HF's Llama converter)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rotate_half_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of meta_to_rotate_half: back to the interleaved pairs llama2.c's run.c rotates."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def read_llama2c(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and talelab-named weights of a llama2.c legacy float32 export (run.c's format)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: llama2.c checkpoint not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 28:
        raise InputError(f"{path}: too short for a llama2.c header (28 bytes, file has {raw.size})")
    header = dict(zip(LLAMA2C_HEADER, raw[:28].view(np.int32).tolist()))
    if min(header.values()) == 0 or header["dim"] < 0 or header["n_layers"] < 0:
        raise InputError(f"{path}: header {header} is not a llama2.c legacy export")
    shared = header["vocab_size"] > 0  # llama2.c's convention: a negative vocab size means a separate classifier
    vocab, dim, hidden, layers = abs(header["vocab_size"]), header["dim"], header["hidden_dim"], header["n_layers"]
    heads, kv_heads, seq_len = header["n_heads"], header["n_kv_heads"], header["seq_len"]
    head_size = dim // heads
    kv_dim = kv_heads * head_size
    shapes = [
        ("tok_embeddings", (vocab, dim)), ("attention_norm", (layers, dim)), ("wq", (layers, dim, dim)),
        ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
        ("ffn_norm", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)), ("norm", (dim,)),
        ("freq_cis_real", (seq_len, head_size // 2)), ("freq_cis_imag", (seq_len, head_size // 2)),
    ]
    if not shared:
        shapes.append(("output", (vocab, dim)))
    expected = 28 + 4 * sum(int(np.prod(s)) for _, s in shapes)
    if raw.size != expected:
        raise InputError(f"{path}: {raw.size} bytes but header {header} implies {expected} (truncated or another "
                         f"format; only llama2.c's legacy float32 export is supported)")
    floats = torch.from_numpy(raw[28:].view(np.float32).copy())
    w, offset = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = floats[offset:offset + n].view(shape)
        offset += n
    config = ModelConfig(vocab_size=vocab, d_model=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                         d_ff=hidden, context_length=seq_len, positions="rope", norm="rmsnorm", norm_position="pre",
                         activation="swiglu", tie_embeddings=shared, bias=False, norm_eps=1e-5)
    state = {"embed.weight": w["tok_embeddings"], "norm.weight": w["norm"],
             "lm_head.weight": w["tok_embeddings"] if shared else w["output"]}
    for i in range(layers):
        q = meta_to_rotate_half(w["wq"][i], heads)
        k = meta_to_rotate_half(w["wk"][i], kv_heads)
        state[f"blocks.{i}.attn_norm.weight"] = w["attention_norm"][i]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, w["wv"][i]])
        state[f"blocks.{i}.attn.out.weight"] = w["wo"][i]
        state[f"blocks.{i}.mlp_norm.weight"] = w["ffn_norm"][i]
        state[f"blocks.{i}.mlp.up.weight"] = torch.cat([w["w1"][i], w["w3"][i]])  # gate rows, then up rows
        state[f"blocks.{i}.mlp.down.weight"] = w["w2"][i]
    return config, state


def import_llama2c(path: str | os.PathLike) -> Transformer:
    """A talelab Transformer holding a llama2.c checkpoint's weights."""
    config, state = read_llama2c(path)
    model = Transformer(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_llama2c(model: Transformer, path: str | os.PathLike) -> Path:
    """Write a llama2.c legacy float32 checkpoint that run.c decodes (and import_llama2c reads back exactly)."""
    c = model.config
    llama_compatible(c)
    q_rows, kv_rows = c.n_heads * c.head_size, c.n_kv_heads * c.head_size
    blocks = list(model.blocks)
    qkv = [b.attn.qkv.weight.detach().split([q_rows, kv_rows, kv_rows]) for b in blocks]
    gate_up = [b.mlp.up.weight.detach().chunk(2) for b in blocks]
    # The tables as llama2.c's precompute_freqs_cis computes them (reciprocal first), so files match bit for bit.
    frequencies = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_size, 2).float() / c.head_size))
    angles = torch.outer(torch.arange(c.context_length).float(), frequencies)
    parts = [
        model.embed.weight, *(b.attn_norm.weight for b in blocks),
        *(rotate_half_to_meta(q, c.n_heads) for q, _, _ in qkv),
        *(rotate_half_to_meta(k, c.n_kv_heads) for _, k, _ in qkv),
        *(v for _, _, v in qkv), *(b.attn.out.weight for b in blocks), *(b.mlp_norm.weight for b in blocks),
        *(gate for gate, _ in gate_up), *(b.mlp.down.weight for b in blocks), *(up for _, up in gate_up),
        model.norm.weight, angles.cos(), angles.sin(),  # run.c reads (and newer versions skip) these RoPE tables
    ]
    if not c.tie_embeddings:
        parts.append(model.lm_head.weight)
    vocab = c.vocab_size if c.tie_embeddings else -c.vocab_size  # llama2.c: negative means a separate classifier
    header = np.array([c.d_model, c.d_ff, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.context_length], np.int32)
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            for part in parts:
                f.write(part.detach().float().contiguous().numpy().tobytes())
    return path


# What each Hugging Face architecture computes, as talelab settings: a model exports to the first that fits.
# GPT-2 has biases everywhere (a bias-free model exports with zero biases) and absolute positions, into which a
# sinusoidal table is copied; it has no grouped-query attention and no post-norm, and Llama no LayerNorm.
ARCHITECTURES = {
    "llama": {"family": ("transformer",), "positions": ("rope",), "norm": ("rmsnorm",), "norm_position": ("pre",),
              "activation": ("swiglu",), "bias": (False,)},
    "gpt2": {"family": ("transformer",), "positions": ("learned", "sinusoidal"), "norm": ("layernorm",),
             "norm_position": ("pre",), "activation": ("gelu", "relu")},
}


def misfits(config: ModelConfig, architecture: str) -> list[str]:
    """The settings of `config` that `architecture` cannot compute, as 'key=value (needs ...)'."""
    found = [f"{key}={getattr(config, key)!r} (needs {' or '.join(map(repr, allowed))})"
             for key, allowed in ARCHITECTURES[architecture].items() if getattr(config, key) not in allowed]
    if architecture == "gpt2" and config.n_kv_heads not in (0, config.n_heads):
        found.append(f"n_kv_heads={config.n_kv_heads} (needs n_heads: GPT-2 has no grouped-query attention)")
    return found


def hf_architecture(config: ModelConfig) -> str:
    """'llama' or 'gpt2', whichever computes exactly what this model computes; else a ConfigError naming why."""
    for architecture in ARCHITECTURES:
        if not misfits(config, architecture):
            return architecture
    raise ConfigError("export to Hugging Face: no architecture computes this model; Llama needs "
                      + ", ".join(misfits(config, "llama")) + "; GPT-2 needs " + ", ".join(misfits(config, "gpt2")))


def llama_compatible(config: ModelConfig) -> None:
    """Raise unless the architecture is exactly what LlamaForCausalLM computes."""
    if misfits(config, "llama"):
        raise ConfigError(f"export to Hugging Face Llama needs {', '.join(misfits(config, 'llama'))}")


def to_hf_llama(model: Transformer, tokenizer: Tokenizer):
    """A transformers LlamaForCausalLM with this model's weights (fp32)."""
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    llama_compatible(c)
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_size,
        max_position_embeddings=c.context_length, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=None)
    q_rows, kv_rows = c.n_heads * c.head_size, c.n_kv_heads * c.head_size
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.split([q_rows, kv_rows, kv_rows])
        gate, up = block.mlp.up.weight.chunk(2)
        prefix = f"model.layers.{i}."
        state.update({
            prefix + "input_layernorm.weight": block.attn_norm.weight,
            prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v, prefix + "self_attn.o_proj.weight": block.attn.out.weight,
            prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
            prefix + "mlp.gate_proj.weight": gate, prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.mlp.down.weight,
        })
    hf_model = LlamaForCausalLM(hf_config)
    hf_model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()}, strict=True)
    return hf_model.eval()


def to_hf_gpt2(model: Transformer, tokenizer: Tokenizer):
    """A transformers GPT2LMHeadModel with this model's weights (fp32): pre-norm LayerNorm blocks, GELU or ReLU,
    learned or sinusoidal positions (the table becomes GPT-2's position embedding)."""
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if misfits(c, "gpt2"):
        raise ConfigError(f"export to Hugging Face GPT-2 needs {', '.join(misfits(c, 'gpt2'))}")
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=c.d_ff, activation_function=c.activation,  # "gelu" is the exact GELU, as F.gelu; not "gelu_new"
        layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tie_embeddings, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    positions = model.pos_embed.weight if c.positions == "learned" else model.pos_table
    state = {"transformer.wte.weight": model.embed.weight, "transformer.wpe.weight": positions,
             "lm_head.weight": model.lm_head.weight, **layer_norm("transformer.ln_f", model.norm)}
    for i, block in enumerate(model.blocks):
        prefix = f"transformer.h.{i}."
        state.update({**layer_norm(prefix + "ln_1", block.attn_norm), **layer_norm(prefix + "ln_2", block.mlp_norm),
                      **conv1d(prefix + "attn.c_attn", block.attn.qkv), **conv1d(prefix + "mlp.c_fc", block.mlp.up),
                      **conv1d(prefix + "attn.c_proj", block.attn.out),
                      **conv1d(prefix + "mlp.c_proj", block.mlp.down)})
    hf_model = GPT2LMHeadModel(hf_config)
    # strict: every GPT-2 weight is given; GPT-2's fixed causal-mask buffers are not weights and are not saved
    missing, unexpected = hf_model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()},
                                                   strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") or k.endswith("masked_bias") for k in missing), missing
    return hf_model.eval()


def layer_norm(name: str, norm: torch.nn.LayerNorm) -> dict[str, torch.Tensor]:
    """A LayerNorm's weights under GPT-2's names; a bias-free one gets GPT-2's bias as zeros."""
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return {f"{name}.weight": norm.weight, f"{name}.bias": bias}


def conv1d(name: str, linear: torch.nn.Linear) -> dict[str, torch.Tensor]:
    """A Linear as GPT-2's Conv1D, which stores the weight (in, out); the head layout of the fused q/k/v rows is
    the same in both (all query heads, then keys, then values)."""
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    return {f"{name}.weight": linear.weight.t(), f"{name}.bias": bias}


def export_hf(model: Transformer, tokenizer: Tokenizer, out: str | os.PathLike) -> Path:
    """Write a directory that transformers.AutoModelForCausalLM / AutoTokenizer load offline: a Llama for Llama-
    shaped models, a GPT-2 for LayerNorm/GELU models with absolute positions (the seed's `ts-*` shapes)."""
    hf_model = (to_hf_llama if hf_architecture(model.config) == "llama" else to_hf_gpt2)(model, tokenizer)
    out = Path(out)
    with atomic_directory(out) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save(tmp)
    return out


def convert_llama2c(model_path: str, tokenizer_path: str | None, out: str | os.PathLike, data_root=None) -> Path:
    """`talelab convert llama2c`: a llama2.c .bin (+ tokenizer .bin) as a talelab model directory."""
    if tokenizer_path is None:
        raise InputError("convert llama2c: --tokenizer is required (the llama2.c tokenizer .bin of this model)")
    model = import_llama2c(resolve_input(model_path, data_root))
    tokenizer = load_tokenizer(resolve_input(tokenizer_path, data_root))
    check_vocabulary(model.config, tokenizer, str(tokenizer_path))
    with atomic_directory(out) as tmp:
        save_model(tmp, model, tokenizer, extra={"source": f"llama2.c {model_path}"})
    return Path(out)


def convert_hf(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """`talelab convert hf`: a talelab model or run directory as a Hugging Face Llama or GPT-2 directory."""
    model, tokenizer, _ = load_model(model_path)
    return export_hf(model, tokenizer, out)
