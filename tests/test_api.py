"""talelab's Python API: README's notebook code runs as written, and each call gives what its command gives."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import talelab
from talelab import api, paths
from talelab.cli import main
from talelab.config import EvalConfig
from talelab.errors import ConfigError
from talelab.evaluate.likelihood import reference_pieces, score_documents

README = Path(__file__).resolve().parents[1] / "README.md"
# README's block trains the demo preset (minutes on 2 cores); the test runs the same calls on the tiny one
SMALLER = {'preset="demo"': 'preset="tiny"'}


def readme_block() -> str:
    """The first ```python block under README's '## Python API' heading."""
    match = re.search(r"^## Python API\n(?:(?!^## ).)*?^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                      re.M | re.S)
    assert match, "README.md: no ```python block under '## Python API'"
    return match.group(1)


def test_import_talelab_leaves_torch_unloaded():
    code = "import sys, talelab; assert 'torch' not in sys.modules, 'torch loaded'; assert 'train' in dir(talelab)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_and_evaluate_stay_functions_once_their_subpackages_are_imported():
    # this file's imports have loaded talelab.evaluate.likelihood and (through talelab.api) talelab.train.loop
    assert "talelab.train.loop" in sys.modules and "talelab.evaluate.likelihood" in sys.modules
    assert talelab.train is api.train and talelab.evaluate is api.evaluate and talelab.load is api.load


def test_unknown_keywords_are_one_config_error_naming_them():
    with pytest.raises(ConfigError, match=r"talelab train: unknown keywords 'lrr', 'n_layer' \(known: .*n_layers"):
        talelab.train(preset="tiny", n_layer=3, lrr=1e-3)
    with pytest.raises(ConfigError, match=r"talelab.load: unknown keyword 'dvice'"):
        talelab.load("no-such-model", dvice="cpu")  # checked before anything loads
    with pytest.raises(ConfigError, match=r"talelab eval: unknown keyword 'temprature'"):
        talelab.evaluate("no-such-model", temprature=0.7)
    with pytest.raises(ConfigError, match=r"talelab prepare: unknown keyword 'max_docs'"):
        talelab.prepare(max_docs=10)


def test_keyword_values_are_typed_and_checked_as_flags_are():
    with pytest.raises(ConfigError, match="'max_steps' must be an int, got 'many'"):
        talelab.train(preset="tiny", max_steps="many")
    with pytest.raises(ConfigError, match=r"top_p=2.0 must be in \(0, 1\]"):
        talelab.evaluate("no-such-model", top_p=2)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        talelab.train(preset="huge")


def test_flags_of_sections_are_flat_keywords():
    flags = api.flag_destinations(EvalConfig)
    assert (flags["top_p"], flags["dtype"], flags["judge_model"], flags["suite"]) == (
        "sampling.top_p", "decode.dtype", "judge.model", "suite")
    assert "num_samples" not in flags  # eval leaves it off its flags (each suite says how many stories it samples)


@pytest.mark.slow
def test_readme_python_api_block_runs(tmp_path, monkeypatch, shared):
    block = readme_block()
    for big, small in SMALLER.items():
        assert block.count(big) == 1, f"README's Python API block no longer has {big}"
        block = block.replace(big, small)
    monkeypatch.chdir(tmp_path)  # the block's runs/ folder
    namespace: dict = {}
    exec(compile(block, "README.md, Python API", "exec"), namespace)
    assert namespace["summary"]["step"] == 20 and (tmp_path / "runs/nb/model/latest").is_file()
    saved = yaml.safe_load((tmp_path / "runs/nb/model/config.yaml").read_text(encoding="utf-8"))
    assert (saved["model"]["n_layers"], saved["train"]["lr"]) == (8, 1e-3)  # flat keywords reached their sections
    assert namespace["story"].startswith("Once upon a time")
    assert namespace["figures"]["bits_per_byte"] > 0 and namespace["figures"]["documents"] == 1
    report = namespace["report"]
    assert [s["status"] for s in report["sections"].values()] == ["ok", "ok"]
    assert (Path(report["out"]) / "report.md").is_file() and (Path(report["out"]) / "config.yaml").is_file()


@pytest.mark.slow
def test_generate_with_a_seed_writes_what_talelab_generate_writes(tiny_run, capsys):
    model = talelab.load(tiny_run)
    settings = {"max_new_tokens": 30, "temperature": 0.9, "top_k": 20, "seed": 3}
    story = model.generate("Once upon a time", **settings)
    stories = model.generate("Once upon a time", num_samples=2, **settings)
    flags = [str(a) for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", v)]
    assert main(["generate", "--model", str(tiny_run), "--prompt", "Once upon a time", *flags]) == 0
    assert capsys.readouterr().out == story + "\n"
    assert main(["generate", "--model", str(tiny_run), "--prompt", "Once upon a time", "--num-samples", "2",
                 *flags]) == 0
    assert capsys.readouterr().out == "".join(f"--- story {i + 1} ---\n{s}\n\n" for i, s in enumerate(stories))
    with pytest.raises(ConfigError, match=r"Model.generate: unknown keywords 'temprature', 'topk'"):
        model.generate(temprature=0.5, topk=3)


@pytest.mark.slow
def test_score_gives_the_figures_of_talelab_eval_loss(tiny_run, shared, capsys):
    model = talelab.load(tiny_run)
    pieces = reference_pieces(shared / paths.TINYSTORIES_VALID)
    figures = model.score(pieces)
    assert main(["eval", "loss", "--model", str(tiny_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (figures["loss"], figures["bits_per_byte"]) == (printed["loss"], printed["bits_per_byte"])
    assert figures == score_documents(model.module, model.tokenizer, pieces)
    assert model.score(pieces[0]) == score_documents(model.module, model.tokenizer, pieces[:1])
