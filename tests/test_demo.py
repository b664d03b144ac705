import json

import pytest
from safetensors.torch import load_file

from talelab.config import build_train_configs
from talelab.demo import demo_train_overrides, run_demo
from talelab.presets import PRESETS
from talelab.train.loop import train


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_both_models(tmp_path, capsys, shared):
    summary = run_demo(out=str(tmp_path / "demo"), minutes=0.05)
    out = capsys.readouterr().out
    for stage in ("1/6 prepare", "2/6 tokenizer", "3/6 pretokenize", "4/6 train", "5/6 measure", "6/6 three stories"):
        assert stage in out
    assert summary["stories260K_bits_per_byte"] == json.loads((tmp_path / "demo" / "summary.json").read_text())[
        "stories260K_bits_per_byte"]
    assert abs(summary["stories260K_bits_per_byte"] - 0.975) < 0.001
    assert summary["demo_eval"]["bytes"] == 62046 and summary["demo_bits_per_byte"] > 0
    assert len(summary["stories"]) == 3 and all(s.startswith(p) for s, p in zip(summary["stories"], (
        "Once upon a time", "One day, a little dog named", "Lily and Ben")))
    assert (tmp_path / "demo" / "model" / "loss.png").is_file()
    card = (tmp_path / "demo" / "model" / "README.md").read_text()  # the model card carries the measured figures
    assert f"| bits per byte, reference protocol | {summary['demo_bits_per_byte']:.4f} |" in card
    report = json.loads((tmp_path / "demo" / "prepared" / "report.json").read_text())
    assert "1/6 prepare: recase, clean" in out and report["rules"][0]["rule"] == "recase"
    assert report["rules"][0]["changed"] > 5000 and report["documents_out"] > 5000  # the lowercased head, recased


@pytest.mark.slow
def test_two_demo_preset_runs_with_one_seed_give_identical_weights(tmp_path, prepared, bpe_dir):
    """The demo trains a budget of tokens, not minutes, so the machine's speed cannot change the model."""
    assert "max_minutes" not in PRESETS["demo"]["train"] and PRESETS["demo"]["train"]["max_tokens"] > 0
    weights = []
    for run in ("first", "second"):
        model_config, config = build_train_configs("demo", overrides={"train": {
            "data": str(prepared), "tokenizer": str(bpe_dir), "out": str(tmp_path / run), "progress": False,
            "device": "cpu", "max_tokens": 3 * 16 * 256, "eval_interval": 3, "checkpoint_interval": 3,
            "compile": False}})  # the budget is the subject; test_demo_runs_every_stage... trains compiled
        assert train(model_config, config, log=lambda *_: None)["step"] == 3
        weights.append(load_file(str(tmp_path / run / "checkpoints" / "step-00000003" / "model.safetensors")))
    first, second = weights
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def test_the_demo_trains_compiled_and_without_a_compiler_says_so_and_trains_eager(tmp_path, capsys):
    import torch._inductor.config

    assert PRESETS["demo"]["train"]["compile"] and "compile" not in demo_train_overrides(tmp_path)
    assert capsys.readouterr().out == ""
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # a laptop without g++
        assert demo_train_overrides(tmp_path)["compile"] is False
    assert "torch.compile on the CPU needs a C++ compiler" in capsys.readouterr().out
