import pytest
import torch

from talelab.config import ModelConfig, SamplingConfig
from talelab.presets import PRESETS
from talelab.errors import ConfigError
from talelab.generate import generate
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.train.loop import train

FAMILIES = ["rnn", "lstm", "gru"]


def small(family: str, **overrides) -> ModelConfig:
    return ModelConfig(**{**dict(family=family, vocab_size=53, d_model=24, hidden_size=32, n_layers=2,
                                 context_length=40, tie_embeddings=False, bias=True), **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_decoding_equals_argmax_of_full_forward_passes(family):
    torch.manual_seed(0)
    model = build_model(small(family)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # confident predictions: a wrong state would change the tokens
    prompt = [3, 7, 11]
    fast = generate(model, prompt, SamplingConfig(temperature=0.0, max_new_tokens=15), eos_id=None)[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(15):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert fast == ids[len(prompt):]


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_and_samples_work_through_the_recurrent_state(family):
    torch.manual_seed(0)
    model = build_model(small(family)).eval()
    beams = generate(model, [1, 2], SamplingConfig(num_beams=3, num_samples=2, temperature=0.0, max_new_tokens=8),
                     eos_id=None)
    samples = generate(model, [1, 2], SamplingConfig(num_samples=3, seed=1, max_new_tokens=8), eos_id=None)
    assert [len(b) for b in beams] == [8, 8] and [len(s) for s in samples] == [8, 8, 8]


@pytest.mark.parametrize("name,millions", [("rnn-5m", 5.0), ("lstm-5m", 5.0), ("gru-5m", 5.2)])
def test_seed_recurrent_presets_have_about_five_million_parameters_with_2048_words(name, millions):
    config = ModelConfig(**{**PRESETS[name]["model"], "vocab_size": 2048})
    assert build_model(config).num_parameters() / 1e6 == pytest.approx(millions, abs=0.06)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_recurrent_models_train_checkpoint_reload_and_evaluate(family, tiny_configs, tmp_path):
    model_cfg, cfg = tiny_configs(tmp_path / family, model={"family": family, "hidden_size": 48,
                                                                   "tie_embeddings": False})
    summary = train(model_cfg, cfg, log=lambda *_: None)
    model, tokenizer, raw = load_model(tmp_path / family)
    assert raw["model"]["family"] == family and summary["step"] == 20
    assert type(model).__name__ == "RecurrentLM" and summary["val_loss"] < 6.5


def test_tied_recurrent_embeddings_need_equal_sizes():
    with pytest.raises(ConfigError, match="hidden_size"):
        small("lstm", tie_embeddings=True)
