"""`talelab convert gguf`: a Llama-shaped talelab model as the GGUF file llama.cpp (and ollama, LM Studio) runs.

The tensors and metadata are those llama.cpp's own converter writes for a Llama (`convert_hf_to_gguf.py`): f32
weights, query and key rows in Meta's interleaved RoPE layout (talelab, like Hugging Face, keeps rotate-half), the
output matrix left out when tied. The tokenizer goes in the form llama.cpp tokenizes the same way talelab does:
- llama2.c's sentencepiece vocabulary (stories260K) as the `llama` (sentencepiece) model: pieces, scores, byte
  tokens, a dummy-prefix space;
- talelab's byte-level BPE as the `gpt2` model: the byte-level pieces, the merges and GPT-2's pre-tokenizer.
The file is checked against llama.cpp itself by benchmarks/gguf_check.py (llama.cpp builds from source).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from talelab.atomic import atomic_file
from talelab.errors import ConfigError
from talelab.models.convert import llama_compatible, rotate_half_to_meta
from talelab.models.transformer import Transformer
from talelab.tokenizer import Tokenizer
from talelab.tokenizer.llama2c import FIRST_PIECE, SPECIALS


def export_gguf(model: Transformer, tokenizer: Tokenizer, out: str | os.PathLike, name: str = "talelab") -> Path:
    """Write `out` (.gguf) atomically; a model llama.cpp's Llama does not compute exactly is refused first."""
    import gguf  # deferred: only this export needs the gguf package

    c = model.config
    llama_compatible(c)
    if tokenizer.kind not in ("llama2c", "bpe", "gpt2"):
        raise ConfigError(f"export to GGUF: a {tokenizer.kind} tokenizer has no llama.cpp form (llama2c "
                          f"sentencepiece or byte-level BPE only)")
    out = Path(out)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_context_length(c.context_length)
        writer.add_embedding_length(c.d_model)
        writer.add_block_count(c.n_layers)
        writer.add_feed_forward_length(c.d_ff)
        writer.add_head_count(c.n_heads)
        writer.add_head_count_kv(c.n_kv_heads or c.n_heads)
        writer.add_rope_dimension_count(c.head_size)
        writer.add_rope_freq_base(c.rope_theta)
        writer.add_layer_norm_rms_eps(c.norm_eps)
        writer.add_vocab_size(c.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        add_tokenizer(writer, tokenizer, gguf)
        for tensor_name, tensor in gguf_tensors(model).items():
            writer.add_tensor(tensor_name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def gguf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """Every weight under llama.cpp's Llama names, as f32 arrays in PyTorch's (out, in) shape."""
    c = model.config
    kv_heads = c.n_kv_heads or c.n_heads
    q_rows, kv_rows = c.n_heads * c.head_size, kv_heads * c.head_size
    tensors = {"token_embd.weight": model.embed.weight, "output_norm.weight": model.norm.weight}
    if not c.tie_embeddings:  # llama.cpp reads the embedding table as the output matrix when this is absent
        tensors["output.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.split([q_rows, kv_rows, kv_rows])
        gate, up = block.mlp.up.weight.chunk(2)
        tensors.update({
            f"blk.{i}.attn_norm.weight": block.attn_norm.weight,
            f"blk.{i}.attn_q.weight": rotate_half_to_meta(q, c.n_heads),
            f"blk.{i}.attn_k.weight": rotate_half_to_meta(k, kv_heads),
            f"blk.{i}.attn_v.weight": v, f"blk.{i}.attn_output.weight": block.attn.out.weight,
            f"blk.{i}.ffn_norm.weight": block.mlp_norm.weight, f"blk.{i}.ffn_gate.weight": gate,
            f"blk.{i}.ffn_up.weight": up, f"blk.{i}.ffn_down.weight": block.mlp.down.weight,
        })
    return {name: t.detach().float().cpu().contiguous().numpy() for name, t in tensors.items()}


def add_tokenizer(writer, tokenizer: Tokenizer, gguf) -> None:
    """The vocabulary in the llama.cpp model that tokenizes text as talelab's tokenizer does."""
    spec = json.loads(tokenizer.backend.to_str())
    vocab = spec["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    if tokenizer.kind == "llama2c":
        # sentencepiece picks the highest-scoring merge first; the tokenizer keeps only their order, which the
        # scores restate: a piece's score is minus the rank of the first merge that makes it
        rank = {}
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", ""), r)
        types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        types += [gguf.TokenType.BYTE] * (FIRST_PIECE - len(SPECIALS))
        types += [gguf.TokenType.NORMAL] * (len(pieces) - FIRST_PIECE)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(pieces)
        writer.add_token_scores([0.0 if i < FIRST_PIECE else -float(rank.get(p, len(merges)))
                                 for i, p in enumerate(pieces)])
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_add_space_prefix(True)  # run.c's dummy prefix
    else:
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")  # talelab's BPE splits text with GPT-2's byte-level regex
        writer.add_token_list(pieces)
        writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                                for i in range(len(pieces))])
        writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(True)  # talelab begins every story with its beginning-of-story token
    writer.add_add_eos_token(False)
