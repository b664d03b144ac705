import pytest
import torch

from talelab.config import ModelConfig, TrainConfig
from talelab.presets import PRESETS
from talelab.models import build_model

# seed 002's transformer table with its 2,048-word vocabulary, counted by talelab (embeddings, untied output layer,
# biases and norms included). ts-15m and ts-35m keep the seed's published shapes, which do not give their names'
# counts (see the comment at their presets).
EXPECTED_MILLIONS = {"ts-1m": 1.00, "ts-5m": 5.01, "ts-10m": 10.01, "ts-15m": 23.11, "ts-35m": 88.18}


@pytest.mark.parametrize("name", EXPECTED_MILLIONS)
def test_seed_transformer_presets_count_their_parameters_with_2048_words(name):
    config = ModelConfig(**{**PRESETS[name]["model"], "vocab_size": 2048})
    with torch.device("meta"):  # shapes only: no memory for 88M weights
        model = build_model(config)
    assert model.num_parameters() / 1e6 == pytest.approx(EXPECTED_MILLIONS[name], abs=0.005)


def test_the_two_largest_seed_presets_have_the_seed_table_settings():
    m15, t15 = ModelConfig(**PRESETS["ts-15m"]["model"]), TrainConfig(**PRESETS["ts-15m"]["train"])
    m35, t35 = ModelConfig(**PRESETS["ts-35m"]["model"]), TrainConfig(**PRESETS["ts-35m"]["train"])
    assert (m15.d_model, m15.n_heads, m15.n_layers, m15.d_ff, m15.dropout) == (512, 8, 5, 3072, 0.1007)
    assert (m35.d_model, m35.n_heads, m35.n_layers, m35.d_ff, m35.dropout) == (1024, 16, 8, 3072, 0.1007)
    assert (m15.positions, m15.norm_position, m35.positions, m35.norm_position) == ("sinusoidal", "pre",
                                                                                    "sinusoidal", "post")
    assert (t15.lr, t15.step_size, t15.gamma, t35.lr, t35.step_size, t35.gamma) == (0.0012, 12000, 0.5, 0.00065,
                                                                                    11500, 0.555)
    for m, t in ((m15, t15), (m35, t35)):
        assert (m.activation, m.norm, t.schedule, t.batch_size, t.warmup_steps) == ("gelu", "layernorm", "step", 64, 0)
