"""Attention weights recomputed exactly; scores as computed by hand; heads wired by hand get the labels of what they
were wired to do; the command writes its heat maps and table."""

import json

import pytest
import torch

from talelab.cli import main
from talelab.config import ModelConfig
from talelab.interpret.attention import HeadStatistics, attention_weights, head_labels, run_attention
from talelab.models.storage import load_model
from talelab.models.transformer import Transformer

VALID = "data/tinystories/valid-head.txt"


@pytest.mark.parametrize("shape", ["stories260K", "learned-positions-post-norm-bias"])
def test_recomputed_weights_times_values_give_the_attention_modules_output(shape, stories260k):
    if shape == "stories260K":  # RoPE, grouped-query attention (8 query heads share 4 key/value heads)
        model = load_model(stories260k)[0]
    else:
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=64, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2,
                                        context_length=32, positions="learned", norm_position="post", bias=True,
                                        norm="layernorm")).eval()
    seen = []
    attn = model.blocks[1].attn
    attn.register_forward_pre_hook(lambda module, args: seen.append(args))
    attn.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 20)))
        (x, rope, *_), output = seen
        weights = attention_weights(attn, x, rope)
        qkv = attn.qkv(x).view(2, 20, attn.n_heads + 2 * attn.n_kv_heads, attn.head_size)
        v = qkv[:, :, attn.n_heads + attn.n_kv_heads:].transpose(1, 2)
        v = v.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
        mixed = (weights @ v).transpose(1, 2).reshape(2, 20, attn.n_heads * attn.head_size)
        assert torch.allclose(attn.out(mixed), output, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, attn.n_heads, 20))
    assert weights.triu(diagonal=1).abs().max() == 0  # causal


def planted_heads_model(vocab_size: int) -> Transformer:
    """One layer, one-hot learned positions (dims 0-31) and unit token vectors (dims 32-63). Head 0's query at
    position i matches the key at position i - 1; head 1's query matches keys of the same token and shuns itself."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab_size, d_model=128, n_layers=1, n_heads=2, context_length=32,
                                    positions="learned"))
    with torch.no_grad():
        model.pos_embed.weight.copy_(torch.eye(32, 128))
        tokens = torch.nn.functional.normalize(torch.randn(vocab_size, 32), dim=-1)
        model.embed.weight.zero_()
        model.embed.weight[:, 32:64] = tokens
        w = model.blocks[0].attn.qkv.weight  # rows: q head 0, q head 1, k head 0, k head 1, v (64 each)
        w.zero_()
        for m in range(31):
            w[m, m + 1] = 3.0  # q0 at position i points at position i - 1 ...
        for m in range(32):
            w[128 + m, m] = 1.0  # ... where k0 is
            w[64 + m, m] = -3.0  # q1 avoids its own position
            w[64 + 32 + m, 32 + m] = 3.0  # and looks for its own token
            w[192 + m, m] = 1.0
            w[192 + 32 + m, 32 + m] = 1.0
        w[256:].normal_(std=0.02)
    return model


@pytest.mark.slow
def test_planted_previous_token_head_is_positional_and_duplicate_head_is_semantic(tok512, saved, tmp_path):
    model_dir = saved(planted_heads_model(tok512.vocab_size), tok512)
    report = run_attention(model_dir, tmp_path / "out", data=VALID, samples=20, progress=False)
    previous, duplicate = report["heads"]
    assert previous["previous_token"] > 0.95 and previous["distance_correlation"] > 0.9
    assert previous["labels"] == ["positional", "previous-token"]
    assert duplicate["duplicate_token"] > 0.8 and duplicate["distance_correlation"] < 0.5
    assert duplicate["labels"] == ["semantic", "duplicate-token"]


def test_scores_of_an_evenly_spread_head_match_the_hand_computation():
    # a[i, j] = 1 / (i + 1); text ids BOS 5 5 7, and a second text of BOS alone whose padding must not count
    uniform = torch.ones(4, 4).tril() / torch.arange(1, 5)[:, None]
    weights = uniform.expand(2, 1, 4, 4)
    stats = HeadStatistics(n_layers=1, n_heads=1, context=8, window=2)
    stats.add(0, weights, torch.tensor([[1, 5, 5, 7], [1, -1, -1, -1]]), torch.tensor([4, 1]))
    scores = stats.scores()[0][0]
    assert scores["previous_token"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3, abs=1e-4)  # rows 1, 2, 3
    assert scores["first_token"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3, abs=1e-4)
    assert scores["local_window"] == pytest.approx((1 + 2 / 3 + 2 / 4) / 3, abs=1e-4)
    assert scores["duplicate_token"] == pytest.approx(1 / 3, abs=1e-4)  # only row 2 has an earlier copy (row 1)
    # keys j >= 1, in 144ths: d=0: 72, 48, 36; d=1: 48, 36; d=2: 36. Mean 46; total sum of squares 984;
    # distance means 52, 42, 36, so the explained sum of squares is 3*6^2 + 2*4^2 + 10^2 = 240.
    assert scores["distance_correlation"] == pytest.approx((240 / 984) ** 0.5, abs=1e-4)


def test_labels_follow_the_thresholds():
    scores = {"distance_correlation": 0.6, "previous_token": 0.2, "first_token": 0.7, "duplicate_token": 0.1,
              "local_window": 0.55}
    assert head_labels(scores) == ["positional", "first-token", "local-window"]
    assert head_labels(scores, positional_threshold=0.7, role_threshold=0.6) == ["semantic", "first-token"]


@pytest.mark.slow
def test_attention_command_on_stories260k_writes_heat_maps_and_the_head_table(stories260k, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["interpret", "attention", "--model", str(stories260k), "--data", VALID, "--samples", "5",
                 "--protocol", "reference", "--layers", "1", "3", "--heads", "3", "6", "--map-tokens", "12",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "| 3 | 6 | positional, previous-token |" in capsys.readouterr().out  # the clearest head of stories260K
    for name in ("heads.md", "heads.json", "heads_overview.png", "attention/layer1_head3.png",
                 "attention/layer3_head6.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "heads.json").read_text())
    assert [(h["layer"], h["head"]) for h in report["heads"]] == [(1, 3), (1, 6), (3, 3), (3, 6)]
    assert len(report["heat_map_tokens"]) == 12 and report["texts"] == 5


def test_one_text_is_drawn_and_scored(stories260k, tmp_path):
    report = run_attention(stories260k, tmp_path, text="Once upon a time, there was a little dog named Max.",
                           layers=[0], heads=[0], progress=False)
    assert report["texts"] == 1 and report["heat_map_tokens"][1:4] == ["Once", " upon", " a"]
    assert (tmp_path / "attention" / "layer0_head0.png").is_file()
