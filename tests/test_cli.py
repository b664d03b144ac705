"""The command line, in process: every stage runs, and bad input is one line on stderr with a non-zero exit."""

import gzip
import json

import pytest

from talelab import paths
from talelab.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv, code=None, contains=()):
    status, _, err = run(capsys, *argv)
    assert status != 0 if code is None else status == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("talelab"), err
    assert "Traceback" not in err
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_every_stage_runs_from_the_command_line(capsys, tmp_path, shared):
    prepared, tok, run_dir = tmp_path / "prepared", tmp_path / "tok", tmp_path / "run"
    assert run(capsys, "prepare", "--source", paths.TINYSTORIES_TRAIN, "--out", prepared, "--max-documents", 150,
               "--val-fraction", 0.1)[0] == 0
    assert (prepared / "report.md").is_file() and (prepared / "train.jsonl").is_file()
    assert run(capsys, "tokenizer", "train", "--data", prepared, "--out", tok, "--vocab-size", 300)[0] == 0
    assert run(capsys, "pretokenize", "--data", prepared, "--tokenizer", tok)[0] == 0
    code, out, _ = run(capsys, "train", "--preset", "tiny", "--data", prepared, "--tokenizer", tok, "--out", run_dir,
                       "--max-steps", 6, "--d-model", 48, "--no-progress")
    assert code == 0 and json.loads(out[out.index("{"):])["step"] == 6
    code, out, _ = run(capsys, "generate", "--model", run_dir, "--prompt", "Once upon a time", "--max-new-tokens", 20,
                       "--seed", 3, "--num-samples", 2)
    assert code == 0 and out.count("--- story") == 2
    code, out, _ = run(capsys, "eval", "loss", "--model", run_dir)
    report = json.loads(out)
    assert code == 0 and report["bytes"] == 62046 and report["bits_per_byte"] > 1.0
    assert run(capsys, "convert", "hf", "--model", run_dir, "--out", tmp_path / "hf")[0] == 0
    assert (tmp_path / "hf" / "config.json").is_file()


def test_help_documents_every_training_option(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for option in ("--d-model", "--n-kv-heads", "--positions", "--schedule", "--grad-accum", "--dtype", "--compile",
                   "--resume", "--preset", "--config"):
        assert option in out


def test_every_command_prints_its_help(capsys):
    """argparse %-formats help text, so one stray percent sign in any help string breaks `--help` for that command;
    and two sections of one command must not bring the same flag."""
    from talelab.commands import COMMANDS

    assert main(["--help"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in COMMANDS)
    for name in COMMANDS:
        assert main([*name.split(), "--help"]) == 0, name
        assert "--config" in capsys.readouterr().out, name


def test_missing_corpus_names_the_file(capsys, tmp_path):
    one_line_error(capsys, "prepare", "--source", tmp_path / "nope.txt", "--out", tmp_path / "o", contains=["nope.txt"])
    assert not (tmp_path / "o").exists()


def test_empty_corpus_names_the_file(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    one_line_error(capsys, "prepare", "--source", empty, "--out", tmp_path / "o", contains=["empty.txt"])
    assert not (tmp_path / "o").exists()


def test_corpus_empty_after_cleaning_names_the_file(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Hi.\n<|endoftext|>\nBye.\n")
    one_line_error(capsys, "prepare", "--source", short, "--out", tmp_path / "o", contains=["short.txt"])
    assert not (tmp_path / "o").exists()


def test_binary_input_names_the_file(capsys, tmp_path, shared):
    binary = tmp_path / "data.txt"
    binary.write_bytes(gzip.compress((shared / paths.TINYSTORIES_TRAIN).read_bytes()[:5000]))
    one_line_error(capsys, "prepare", "--source", binary, "--out", tmp_path / "o", contains=["data.txt"])


def test_non_utf8_input_names_the_file_and_line(capsys, tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Once upon a time there was a girl.\n\nShe liked caf\u00e9 au lait.\n".encode("latin-1"))
    one_line_error(capsys, "prepare", "--source", latin, "--out", tmp_path / "o", contains=["latin1.txt", "line 3"])


def test_jsonl_line_that_is_not_json_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "stories.jsonl"
    bad.write_text('{"text": "A fine story about a cat who liked to nap in the sun all day."}\n{oops\n')
    one_line_error(capsys, "prepare", "--source", bad, "--out", tmp_path / "o", contains=["stories.jsonl:2"])


def test_jsonl_line_without_the_text_field_names_file_line_and_field(capsys, tmp_path):
    bad = tmp_path / "stories.jsonl"
    bad.write_text('{"text": "A fine story about a cat who liked to nap in the sun all day."}\n{"story": "x"}\n')
    one_line_error(capsys, "prepare", "--source", bad, "--out", tmp_path / "o", contains=["stories.jsonl:2", "text"])


def test_unknown_config_key_names_the_file_and_key(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  d_model: 64\n  n_layerz: 3\n")
    one_line_error(capsys, "train", "--config", config, code=2, contains=["run.yaml", "n_layerz"])


def test_unknown_preset_lists_the_presets(capsys):
    one_line_error(capsys, "train", "--preset", "huge", code=2, contains=["huge", "tiny", "demo"])


def test_bad_choice_is_one_line(capsys):
    one_line_error(capsys, "train", "--positions", "alibi", code=2, contains=["positions"])


def test_tokenizer_that_does_not_fit_the_model_is_refused(capsys, tiny_run, shared):
    gpt2 = shared / paths.GPT2_TOKENIZER_DIR
    from talelab.models.storage import load_model
    from talelab.errors import MismatchError

    with pytest.raises(MismatchError, match="50257 tokens"):
        load_model(tiny_run, tokenizer_path=gpt2)


def test_checkpoint_from_another_model_shape_names_the_tensor(capsys, tiny_run, tmp_path):
    import shutil

    from talelab.models.storage import resolve_model_dir

    copy = tmp_path / "edited"
    shutil.copytree(resolve_model_dir(tiny_run), copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["d_model"] = 64
    (copy / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, "generate", "--model", copy, code=3, contains=["model.safetensors", "shape"])


def test_prompt_longer_than_the_context_is_refused(capsys, tiny_run):
    one_line_error(capsys, "generate", "--model", tiny_run, "--prompt", "word " * 200, code=3, contains=["64"])


def test_missing_model_directory_names_it(capsys, tmp_path):
    one_line_error(capsys, "eval", "loss", "--model", tmp_path / "ghost", contains=["ghost"])


def test_preset_then_yaml_then_flags_with_later_winning(capsys, tmp_path, prepared, bpe_dir):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  d_model: 48\n  n_layers: 3\ntrain:\n  max_steps: 4\n  lr: 0.002\n")
    code, _, _ = run(capsys, "train", "--preset", "tiny", "--config", config, "--n-layers", 1, "--data", prepared,
                     "--tokenizer", bpe_dir, "--out", tmp_path / "run", "--no-progress")
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert code == 0
    assert (saved["model"]["d_model"], saved["model"]["n_layers"], saved["model"]["n_heads"]) == (48, 1, 4)
    assert (saved["train"]["lr"], saved["train"]["batch_size"]) == (0.002, 8)


def test_resume_needs_only_the_run_directory(capsys, tmp_path, prepared, bpe_dir):
    common = ["--data", prepared, "--tokenizer", bpe_dir, "--out", tmp_path / "run", "--no-progress"]
    assert run(capsys, "train", "--preset", "tiny", "--d-model", 48, "--max-steps", 4, "--schedule-steps", 8,
               *common)[0] == 0
    code, out, _ = run(capsys, "train", "--out", tmp_path / "run", "--resume", "--max-steps", 8)
    assert code == 0 and json.loads(out[out.index("{"):])["step"] == 8
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000008" / "config.json").read_text())
    assert saved["model"]["d_model"] == 48


def test_resume_without_a_run_names_the_directory(capsys, tmp_path):
    one_line_error(capsys, "train", "--out", tmp_path / "nothing", "--resume", contains=["nothing", "resume"])


def test_compiling_without_a_cpp_compiler_is_one_line_naming_what_to_install(capsys, tmp_path, prepared, bpe_dir,
                                                                               tiny_run):
    """A laptop without g++ asked to compile (the demo preset does): one line before any work, not Inductor's
    traceback at the first step."""
    import torch._inductor.config

    # what CXX=/nonexistent/c++ sets; torch's own patch (pytest's monkeypatch deletes the key when undoing it)
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        for argv in (("train", "--preset", "tiny", "--data", prepared, "--tokenizer", bpe_dir, "--out",
                      tmp_path / "run", "--device", "cpu", "--compile"),
                     ("generate", "--model", tiny_run, "--compile", "--max-new-tokens", 4)):
            one_line_error(capsys, *argv, code=2, contains=("compile: torch.compile on the CPU needs a C++ compiler",
                                                            "/nonexistent/c++"))
    assert not (tmp_path / "run").exists()
