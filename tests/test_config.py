"""Settings: preset < YAML < flags for every command, the saved config.yaml repeats a run, and bad values are one
line naming the file and the key."""

import dataclasses
import json

import pytest
import yaml

from talelab.cli import command_parser, main, resolve_command
from talelab.commands import COMMANDS
from talelab.config import EvalConfig, FinetuneConfig, LoraConfig, ModelConfig, TrainRun
from talelab.errors import ConfigError
from talelab.settings import CONFIG_FILE, config_values, nested, resolve

from .test_cli import one_line_error


def settle(name: str, *argv) -> object:
    """The config `talelab <name> ARGV` would run with, without running it."""
    command = COMMANDS[name]
    return resolve_command(name, command, command_parser(name, command).parse_args([str(a) for a in argv]))


def required_values(cls) -> dict:
    """A value for every required field (and section field), so that any command's config resolves."""
    values = {}
    for f in dataclasses.fields(cls):
        if nested(f) and "section" in f.metadata:
            inner = required_values(nested(f))
            if inner:
                values[f.name] = inner
        elif f.metadata.get("required"):
            choices = f.metadata.get("choices") or ()
            values[f.name] = (choices[0] if choices else ["x"] if str(f.type).startswith("list") else "x")
    return values


def last_json(out: str) -> dict:
    """The summary train prints last, after its progress lines."""
    return json.loads(out[out.index("\n{") + 1:])


def test_flags_win_over_yaml_which_wins_over_the_preset(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  d_model: 48\n  n_layers: 3\ntrain:\n  lr: 1e-2\n  max_steps: 7\n")
    run = settle("train", "--preset", "tiny", "--config", config, "--n-layers", 1)
    assert (run.model.d_model, run.model.n_layers, run.model.context_length) == (48, 1, 64)  # yaml, flag, preset
    assert (run.train.lr, run.train.max_steps, run.train.batch_size) == (0.01, 7, 8)  # '1e-2' read as a number


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_reads_yaml_and_its_saved_config_round_trips(name, tmp_path):
    command = COMMANDS[name]
    first = resolve(command.config, [("test", required_values(command.config))])
    saved = tmp_path / CONFIG_FILE
    saved.write_text(yaml.safe_dump(config_values(first), sort_keys=False))
    again = settle(name, "--config", saved)
    assert config_values(again) == config_values(first)


def test_sections_nest_flags_and_yaml_alike(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model: runs/x\nsampling:\n  temperature: 0.5\ndecode:\n  dtype: bfloat16\njudge:\n  model: j\n")
    ev = settle("eval", "--config", config, "--top-p", 0.9, "--judge-samples", 2)
    assert isinstance(ev, EvalConfig) and ev.model == "runs/x"
    assert (ev.sampling.temperature, ev.sampling.top_p, ev.sampling.max_new_tokens) == (0.5, 0.9, 200)
    assert (ev.decode.dtype, ev.judge.model, ev.judge.samples) == ("bfloat16", "j", 2)


def test_one_lora_config_for_finetune_dpo_and_trials(tmp_path):
    finetune = settle("finetune", "--base", "b", "--lora-rank", 4)
    dpo = settle("dpo", "--base", "b", "--data", "d", "--lora-rank", 4)
    trials = settle("trials", "--preset", "distilgpt2-tags", "--lora-rank", 4)
    assert finetune.lora == dpo.lora.__class__(rank=4, dropout=0.05) and dpo.lora == LoraConfig(rank=4, dropout=0.0)
    assert LoraConfig(**trials.finetune["lora"]) == LoraConfig(rank=4, target_modules="gpt2")  # every trial's
    assert finetune.lora.effective_alpha == 8.0  # alpha 0 means 2 x rank everywhere


def test_bad_values_name_the_file_and_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    one_line_error(capsys, "train", "--config", bad, code=2, contains=["bad.yaml", "lr", "fast"])
    bad.write_text("sampling:\n  temprature: 1\n")
    one_line_error(capsys, "generate", "--model", "m", "--config", bad, code=2, contains=["temprature", "sampling"])
    bad.write_text("- a list\n")
    one_line_error(capsys, "prepare", "--config", bad, code=2, contains=["bad.yaml", "mapping"])
    one_line_error(capsys, "pretokenize", "--data", "d", code=2, contains=["--tokenizer", "required"])
    with pytest.raises(ConfigError, match="top_p"):
        settle("generate", "--model", "m", "--top-p", 0)  # checked on construction, whoever builds it


def test_checks_run_however_a_config_is_built():
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="rank"):
        FinetuneConfig(base="b", lora=LoraConfig(rank=0))
    with pytest.raises(ConfigError, match="schedule"):
        resolve(TrainRun, [("x.yaml", {"train": {"schedule": "linear"}})])


@pytest.mark.slow
def test_a_saved_config_repeats_the_run(tmp_path, capsys, prepared, bpe_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--preset", "tiny", "--data", str(prepared), "--tokenizer", str(bpe_dir), "--out", str(first),
                 "--max-steps", "6", "--no-progress"]) == 0
    summary = last_json(capsys.readouterr().out)
    saved = yaml.safe_load((first / CONFIG_FILE).read_text())
    assert saved["model"]["d_model"] == 32 and saved["train"]["max_steps"] == 6 and "resume" not in saved
    assert main(["train", "--config", str(first / CONFIG_FILE), "--out", str(second)]) == 0
    again = last_json(capsys.readouterr().out)
    assert (again["val_loss"], again["val_bpb"], again["step"]) == (summary["val_loss"], summary["val_bpb"], 6)
