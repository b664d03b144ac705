"""`talelab convert gguf`, read back with the gguf package's own reader: llama.cpp's Llama metadata, every weight
(query and key rows in Meta's RoPE layout, which turn back into talelab's), and each tokenizer in the llama.cpp
form that splits text as talelab does. That llama.cpp itself writes the same greedy story is benchmarks/
gguf_check.py's job (it builds llama.cpp from source, too long for CI)."""

from __future__ import annotations

import gguf
import pytest
import torch

from talelab import paths
from talelab.cli import main
from talelab.config import ModelConfig
from talelab.errors import ConfigError
from talelab.models.convert import meta_to_rotate_half
from talelab.models.llamacpp import export_gguf
from talelab.models.storage import load_model
from talelab.models.transformer import Transformer
from talelab.tokenizer import load_tokenizer
from talelab.tokenizer.llama2c import read_llama2c


def fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def test_stories260k_becomes_llama_cpp_s_llama_with_its_sentencepiece_vocabulary(stories260k, shared, tmp_path):
    assert main(["convert", "gguf", "--model", str(stories260k), "--out", str(tmp_path / "s.gguf")]) == 0
    model, tokenizer, _ = load_model(stories260k)
    c = model.config
    reader = gguf.GGUFReader(tmp_path / "s.gguf")
    meta = fields(reader)
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"],
            meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"],
            meta["llama.context_length"]) == (5, 64, 172, 8, 4, 512)  # stories260K's published shape
    assert meta["llama.rope.dimension_count"] == c.head_size and meta["tokenizer.ggml.model"] == "llama"
    pieces = meta["tokenizer.ggml.tokens"]
    assert len(pieces) == 512 and pieces[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert pieces[300] == tokenizer.backend.id_to_token(300)  # the pieces keep their ▁ spaces, as sentencepiece
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is True
    # sentencepiece merges the pair whose piece scores highest: the scores must order the pieces as the original's
    scores, (_, original) = meta["tokenizer.ggml.scores"], read_llama2c(shared / paths.STORIES260K_TOKENIZER)
    assert scores[:259] == [0.0] * 259
    merged = [i for i in range(259, 512) if len(pieces[i]) > 1]  # single characters are never made by a merge
    by_original = sorted(merged, key=lambda i: -original[i])
    assert [scores[i] for i in by_original] == sorted((scores[i] for i in merged), reverse=True)

    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert len(tensors) == 2 + 9 * c.n_layers + (0 if c.tie_embeddings else 1)
    assert torch.equal(tensors["token_embd.weight"], model.embed.weight.detach())
    q_rows, kv_rows = c.n_heads * c.head_size, c.n_kv_heads * c.head_size
    q, k, v = model.blocks[2].attn.qkv.weight.detach().split([q_rows, kv_rows, kv_rows])
    assert not torch.equal(tensors["blk.2.attn_q.weight"], q)  # reordered into Meta's interleaved pairs ...
    assert torch.equal(meta_to_rotate_half(tensors["blk.2.attn_q.weight"], c.n_heads), q)  # ... and back
    assert torch.equal(meta_to_rotate_half(tensors["blk.2.attn_k.weight"], c.n_kv_heads), k)
    assert torch.equal(tensors["blk.2.attn_v.weight"], v)
    gate, up = model.blocks[4].mlp.up.weight.detach().chunk(2)
    assert torch.equal(tensors["blk.4.ffn_gate.weight"], gate) and torch.equal(tensors["blk.4.ffn_up.weight"], up)


def test_a_byte_level_bpe_model_gets_llama_cpp_s_gpt2_vocabulary_and_its_own_output_matrix(bpe_dir, tmp_path):
    tokenizer = load_tokenizer(bpe_dir)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                    context_length=64, tie_embeddings=False))
    export_gguf(model, tokenizer, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    meta = fields(reader)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert meta["tokenizer.ggml.tokens"] == [tokenizer.backend.id_to_token(i) for i in range(tokenizer.vocab_size)]
    merges = meta["tokenizer.ggml.merges"]
    assert len(merges) == tokenizer.vocab_size - 256 - 1  # every piece past the 256 bytes and <|endoftext|>
    assert meta["tokenizer.ggml.token_type"][tokenizer.bos_id] == gguf.TokenType.CONTROL
    output = next(t for t in reader.tensors if t.name == "output.weight")
    assert torch.equal(torch.from_numpy(output.data.copy()), model.lm_head.weight.detach())


def test_a_model_llama_cpp_s_llama_does_not_compute_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    assert main(["convert", "gguf", "--model", str(tiny_run), "--out", str(tmp_path / "t.gguf")]) == 0  # Llama-shaped
    model, tokenizer, _ = load_model(tiny_run)
    gelu = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                   activation="gelu"))
    with pytest.raises(ConfigError, match="activation='gelu'"):
        export_gguf(gelu, tokenizer, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists() and [p.name for p in tmp_path.iterdir()] == ["t.gguf"]
