import json

import pytest
import torch
from safetensors.torch import load_file

from talelab.config import ModelConfig, TrainConfig
from talelab.errors import ConfigError
from talelab.models.storage import resolve_model_dir
from talelab.models.transformer import Transformer
from talelab.train.loop import train
from talelab.train.optim import make_optimizers, set_learning_rates

QUIET = dict(log=lambda *_: None)


def tiny_model(**model) -> Transformer:
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, context_length=16, **model))


def test_muon_takes_the_hidden_matrices_and_adamw_the_embeddings_norms_and_biases():
    model = tiny_model(bias=True)
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {f"blocks.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}
    assert in_adamw == set(names.values()) - in_muon and "embed.weight" in in_adamw  # the tied output layer too
    assert not any(n.endswith("bias") or "norm" in n for n in in_muon)

    untied = tiny_model(tie_embeddings=False)
    _, muon = make_optimizers(untied, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert untied.lm_head.weight not in set(muon.param_groups[0]["params"])  # it scores tokens: AdamW's

    (only,) = make_optimizers(model, TrainConfig(), torch.device("cpu"))
    assert isinstance(only, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in only.param_groups) == len(names)


def test_the_schedule_scales_each_optimizer_from_its_own_peak():
    config = TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.04)
    optimizers = make_optimizers(tiny_model(), config, torch.device("cpu"))
    assert set_learning_rates(optimizers, 0.5, config) == pytest.approx(1e-3)  # AdamW's rate, the one logged
    adamw, muon = optimizers
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([1e-3])  # no decaying matrix is left to AdamW
    assert [g["lr"] for g in muon.param_groups] == pytest.approx([0.02])


def test_muon_refuses_fsdp_in_one_line():
    with pytest.raises(ConfigError, match="optimizer muon: Newton-Schulz needs whole matrices"):
        TrainConfig(optimizer="muon", fsdp=True)


@pytest.mark.slow
def test_a_muon_run_learns_and_resumes_bitwise(tiny_configs, tmp_path):
    muon = dict(optimizer="muon", muon_lr=0.02)
    model_cfg, straight = tiny_configs(tmp_path / "straight", max_steps=20, **muon)
    train(model_cfg, straight, **QUIET)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]  # it learns
    _, first_half = tiny_configs(tmp_path / "split", max_steps=10, schedule_steps=20, **muon)
    train(model_cfg, first_half, **QUIET)
    _, second_half = tiny_configs(tmp_path / "split", max_steps=20, **muon)
    train(model_cfg, second_half, resume=True, **QUIET)
    a, b = (load_file(str(resolve_model_dir(tmp_path / run) / "model.safetensors")) for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_run_resumes_only_under_its_own_optimizer(tiny_configs, tmp_path):
    model_cfg, adamw = tiny_configs(tmp_path / "run", max_steps=2)
    train(model_cfg, adamw, **QUIET)
    _, muon = tiny_configs(tmp_path / "run", max_steps=4, optimizer="muon")
    with pytest.raises(ConfigError, match="trained with optimizer adamw, not muon; resume it with --optimizer adamw"):
        train(model_cfg, muon, resume=True, **QUIET)
    _, again = tiny_configs(tmp_path / "run", max_steps=4)
    assert train(model_cfg, again, resume=True, **QUIET)["step"] == 4
