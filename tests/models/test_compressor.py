import pytest
import torch

from talelab.config import ModelConfig, SamplingConfig
from talelab.decoding_batch import generate_batch
from talelab.generate import generate
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.train.loop import train


def compressor(**overrides):
    torch.manual_seed(0)
    config = ModelConfig(**{**dict(family="compressor", vocab_size=41, d_model=32, n_layers=2, n_heads=4,
                                   context_length=32), **overrides})
    return build_model(config).eval()


@pytest.mark.parametrize("length", [7, 8])
def test_no_prediction_depends_on_the_token_it_predicts_or_later_ones(length):
    model = compressor()
    idx = torch.randint(0, 41, (1, length))
    logits = model(idx)[0]
    for t in range(length):
        changed = idx.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 1) % 41  # alter everything after position t
        assert torch.allclose(model(changed)[0][0, t], logits[0, t], atol=1e-5), t


def test_every_prediction_reads_all_the_tokens_before_it():
    model = compressor()
    idx = torch.randint(0, 41, (1, 10))
    changed = idx.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 41
    moved = (model(changed)[0] - model(idx)[0]).abs().amax(dim=-1)[0]
    assert (moved > 1e-6).all()  # the first token reaches every later prediction, through pairs or directly


def test_generation_with_the_history_cache_equals_full_forward_greedy():
    model = compressor()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    prompt = [4, 9, 2]
    fast = generate(model, prompt, SamplingConfig(temperature=0.0, max_new_tokens=12), eos_id=None)[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert fast == ids[3:]


def test_a_batch_whose_finished_rows_ride_past_the_context_still_decodes():
    """A long prompt that may write little beside a short one that writes much: the first row ends at the context
    and rides along while the second writes on (the transformer-limits recipe's completion suite met this)."""
    model = compressor()
    configs = [SamplingConfig(temperature=0.0, max_new_tokens=30), SamplingConfig(temperature=0.0, max_new_tokens=20)]
    long, short = list(range(1, 30)), [4, 9, 2]
    rows = generate_batch(model, [long, short], configs, None)
    assert len(rows[0].tokens) == 32 - len(long)  # cut at the context
    alone = generate(model, short, configs[1], eos_id=None)[0]
    assert rows[1].tokens == alone  # the short row writes what it writes alone


def test_compressor_trains_saves_reloads_and_learns(tiny_configs, tmp_path):
    model_cfg, cfg = tiny_configs(tmp_path / "c", model={"family": "compressor"}, max_steps=30, eval_interval=30)
    summary = train(model_cfg, cfg, log=lambda *_: None)
    model, _, raw = load_model(tmp_path / "c")
    assert type(model).__name__ == "CompressorLM" and raw["model"]["family"] == "compressor"
    assert summary["val_loss"] < 6.0  # below the uniform 6.24 nats of its 512-token vocabulary
