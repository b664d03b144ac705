"""`talelab eval`: the whole report on real tiny models, the completion protocol, sweeps, and bad input."""

import dataclasses
import json
import shutil

import pytest

from talelab.cli import main
from talelab.config import EVAL_SUITES, EvalConfig, JudgeConfig, SamplingConfig
from talelab.errors import ConfigError, InputError
from talelab.evaluate.report import parse_suites, run_eval
from talelab.evaluate.sweep import parse_sweep
from talelab.settings import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small(model, out, **overrides) -> EvalConfig:
    """CI-sized settings: a handful of short stories per section (sampling flags go to the sampling section, as the
    command line sends them)."""
    values = {**dict(model=str(model), out=str(out), stories=4, samples=4, max_new_tokens=40, stories_per_feature=2,
                     batch_size=8, progress=False), **overrides}
    sampling = {f.name: values.pop(f.name) for f in dataclasses.fields(SamplingConfig) if f.name in values}
    return resolve(EvalConfig, [("test", {**values, "sampling": sampling})])


def assert_valid_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert matplotlib.image.imread(path).shape[0] > 50  # decodes, and is a real picture


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, tiny_run, prepared):
    """Every suite on the tiny trained run, a two-setting sweep, and a judge whose endpoint is down."""
    out = tmp_path_factory.mktemp("eval") / "tiny"
    judge = JudgeConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="nobody", retries=0, timeout=5,
                        samples=1, workers=1)
    config = small(tiny_run, out, suite="all", data=str(prepared), train_data=str(prepared), min_words=20,
                   sweep="temperature=0.5,1.0", judge=dataclasses.asdict(judge))
    return run_eval(config)


@pytest.mark.slow
def test_full_report_on_the_tiny_model_writes_every_file(tiny_report):
    from pathlib import Path

    out = Path(tiny_report["out"])
    sections = tiny_report["sections"]
    assert list(sections) == [*EVAL_SUITES, "sweep"]
    for name, section in sections.items():
        if name != "judge":
            assert section["status"] == "ok", (name, section.get("error"))
        for chart in section.get("charts", []):
            assert_valid_png(out / chart)
    markdown = (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert saved["headline"].keys() == tiny_report["headline"].keys()
    for title in ("Likelihood", "Completion protocol", "Diversity", "Decoding sweep", "How the text metrics tokenize"):
        assert title in markdown
    for chart in ("completion_rouge2.png", "diversity_similarity.png", "sweep.png"):
        assert f"]({chart})" in markdown and (out / chart).is_file()
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("setting,temperature,self_bleu")


def test_a_judge_endpoint_that_is_down_fails_its_section_only(tiny_report):
    judge = tiny_report["sections"]["judge"]
    assert judge["status"] == "failed" and "127.0.0.1" in judge["error"]
    assert "\n" not in judge["error"]
    with open(f"{tiny_report['out']}/report.md") as f:
        assert "## LLM judge (failed)" in f.read()


def test_likelihood_and_diversity_figures_are_in_range(tiny_report):
    headline = tiny_report["headline"]
    assert headline["likelihood.bits_per_byte"] > 1.0  # 20 steps of training: far from stories260K's 0.975
    assert headline["likelihood.perplexity"] == pytest.approx(2.718281828 ** headline["likelihood.loss"])
    for figure in ("diversity.self_bleu", "diversity.distinct_2", "completion.rouge1_mean"):
        assert 0.0 <= headline[figure] <= 1.0
    assert tiny_report["sections"]["likelihood"]["bytes"] == 62046


def test_completion_protocol_gives_the_first_40_percent_and_scores_the_rest(tiny_report):
    items = tiny_report["sections"]["completion"]["items"]
    assert len(items) == 4
    for item in items:
        words_given, words_true = len(item["beginning"].split()), len(item["true_ending"].split())
        assert words_given == round(0.4 * (words_given + words_true))
        assert 0.0 <= item["rouge2"] <= item["rouge1"] + 1e-9 <= 1.0 + 1e-9


def test_sweep_table_has_a_row_per_setting(tiny_report):
    sweep = tiny_report["sections"]["sweep"]
    assert [row["setting"] for row in sweep["rows"]] == ["temperature=0.5", "temperature=1.0"]
    assert "| temperature=0.5 |" in sweep["markdown"] and "Self-BLEU" in sweep["markdown"]
    for row in sweep["rows"]:
        assert 0.0 <= row["self_bleu"] <= 1.0 and 0.0 < row["distinct_1"] <= 1.0
        assert 0.0 <= row["novelty_bleu"] <= 1.0 and 0.0 <= row["quality"] <= 1.0  # from memorization and quality
        assert row["novelty"] == pytest.approx(1 - row["novelty_bleu"], abs=1e-4)  # higher is more novel


@pytest.mark.slow
def test_stories260k_default_report_matches_the_reference_bits_per_byte(tmp_path, stories260k):
    report = run_eval(small(stories260k, tmp_path / "s260k", suite="likelihood,completion,diversity"))
    assert report["headline"]["likelihood.bits_per_byte"] == pytest.approx(0.975, abs=5e-4)
    assert report["sections"]["likelihood"]["tokens"] == 29212
    for name in ("report.md", "report.json", "completion_rouge2.png", "diversity_similarity.png"):
        assert (tmp_path / "s260k" / name).is_file()
    assert all(story.startswith("Once upon a time") for story in report["sections"]["diversity"]["samples"])


def test_complete_is_batched_and_reproducible(stories260k):
    from talelab.evaluate.completion import completer
    from talelab.models.storage import load_model
    from talelab.paths import STORIES260K_GREEDY, data_root

    model, tokenizer, _ = load_model(stories260k)
    greedy = SamplingConfig(max_new_tokens=30, temperature=0.0)
    complete = completer(model, tokenizer, greedy, batch_size=2)
    prompts = ["Once upon a time", "Tom had a red ball.", "Once upon a time"]
    texts = complete(prompts)
    expected = (data_root() / STORIES260K_GREEDY).read_text()
    assert expected.startswith("Once upon a time" + texts[0]) and texts[0] == texts[2]
    sampled = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=7)
    first, again = complete(["Once upon a time"] * 3, sampled), complete(["Once upon a time"] * 3, sampled)
    assert first == again and len(set(first)) == 3  # row i draws with seed + i


@pytest.mark.parametrize("text,expected", [
    ("temperature=0.6,0.8,1.2", [{"temperature": 0.6}, {"temperature": 0.8}, {"temperature": 1.2}]),
    ("temperature=0.7,1 top_p=0.9", [{"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.9}]),
    ("num_beams=1,4;repetition_penalty=1.2", [{"num_beams": 1, "repetition_penalty": 1.2},
                                              {"num_beams": 4, "repetition_penalty": 1.2}]),
])
def test_parse_sweep_makes_a_grid(text, expected):
    assert parse_sweep(text) == expected


@pytest.mark.parametrize("text", ["temperature", "temp=0.5", "temperature=hot", "num_beams=1.5", "",
                                  "top_p=0.9 top_p=1"])
def test_malformed_sweeps_are_refused(text):
    with pytest.raises(ConfigError, match="--sweep"):
        parse_sweep(text)


def test_suites_parse_in_report_order():
    assert parse_suites("diversity,likelihood") == ["likelihood", "diversity"]
    assert "judge" not in parse_suites("default") and "judge" in parse_suites("all")
    with pytest.raises(ConfigError, match="unknown suite 'speed'"):
        parse_suites("likelihood,speed")


def one_line_error(capsys, *argv, contains=()):
    quiet = [] if argv[:2] == ("eval", "loss") else ["--no-progress"]  # eval loss draws no progress bar
    code = main([str(a) for a in argv] + quiet)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("talelab: error:"), err
    for text in contains:
        assert text in lines[0], lines[0]


def test_bad_input_is_one_line(capsys, tmp_path, tiny_run, prepared):
    from talelab.models.storage import resolve_model_dir

    one_line_error(capsys, "eval", tiny_run, "--suite", "likelihood,speed", contains=["speed"])
    one_line_error(capsys, "eval", tiny_run, "--sweep", "temperature=hot", contains=["--sweep", "temperature"])
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(resolve_model_dir(tiny_run), no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    one_line_error(capsys, "eval", no_tokenizer, "--out", tmp_path / "r1", contains=["no-tokenizer"])
    empty = tmp_path / "empty-prepared"
    empty.mkdir()
    (empty / "val.jsonl").write_text("")
    one_line_error(capsys, "eval", "loss", "--model", tiny_run, "--text", empty / "val.jsonl", "--protocol",
                   "documents", contains=["val.jsonl"])
    one_line_error(capsys, "eval", tiny_run, "--out", tmp_path / "r2", "--suite", "completion", "--data", empty,
                   contains=["completion", "val.jsonl"])
    one_line_error(capsys, "eval", tiny_run, "--out", prepared, contains=["not a report directory"])


def test_held_out_set_with_no_long_enough_story_names_the_file(tmp_path):
    from talelab.evaluate.completion import held_out_texts

    short = tmp_path / "short.txt"
    short.write_text("Tom ran.\n\nLily sat.\n")
    with pytest.raises(InputError, match="short.txt.*40 words"):
        held_out_texts(str(short), 5, 40)


def test_eval_command_prints_the_headline_and_loss_alias_prints_json(capsys, tmp_path, tiny_run):
    code = main(["eval", str(tiny_run), "--suite", "likelihood", "--out", str(tmp_path / "r"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "| likelihood.bits_per_byte |" in out and (tmp_path / "r" / "report.md").is_file()
    code = main(["eval", "loss", "--model", str(tiny_run)])
    assert code == 0 and json.loads(capsys.readouterr().out)["bytes"] == 62046


@pytest.mark.slow
def test_a_hugging_face_model_gets_the_same_likelihood_as_its_talelab_original(tmp_path, stories260k_hf):
    report = run_eval(small(stories260k_hf, tmp_path / "hf", suite="likelihood,diversity"))
    assert report["headline"]["likelihood.bits_per_byte"] == pytest.approx(0.975, abs=5e-4)
    assert report["sections"]["diversity"]["status"] == "ok" and len(report["sections"]["diversity"]["samples"]) == 4


def test_report_names_keep_the_run_name_of_a_generic_model_folder(tmp_path):
    from talelab.evaluate.report import default_out, model_name

    assert model_name(tmp_path / "runs" / "demo" / "model") == "demo-model"
    assert model_name(tmp_path / "stories260K") == "stories260K"
    assert str(default_out(tmp_path / "runs" / "demo" / "model")) == "runs/eval/demo-model"


@pytest.mark.slow
def test_random_completions_and_the_exact_rouge_search_run_from_the_command_line(tmp_path, stories260k):
    from talelab.evaluate.completion import held_out_texts

    out = tmp_path / "study"
    assert main(["eval", str(stories260k), "--suite", "completion,memorization", "--completion-sample", "random",
                 "--rouge-search", "all", "--stories", "3", "--samples", "3", "--max-new-tokens", "30", "--seed", "5",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    drawn = held_out_texts("data/tinystories/valid-head.txt", 3, 40, sample="random", seed=5)
    items = report["sections"]["completion"]["items"]
    assert [i["beginning"] + i["true_ending"] for i in items] == drawn
    for name in ("rouge1", "rouge2", "rougeL", "tfidf_cosine"):
        assert 0.0 <= report["headline"][f"completion.{name}_sd"] <= report["headline"][f"completion.{name}_mean"] + 1
    memorization = report["sections"]["memorization"]
    assert memorization["rouge_search"] == "all"
    assert all(0 <= r["rouge2_story"] < 2317 for r in memorization["records"])  # train-head.txt's stories
    markdown = (out / "report.md").read_text()
    assert "3 of at least 40 words drawn at random with seed 5" in markdown
    assert "over all 2,317 training stories (exact)" in markdown


@pytest.mark.slow
def test_stories_from_an_instruct_prompt_are_scored_without_its_header(tmp_path, stories260k):
    prompt = "Features: Dialogue\nStory: Once upon a time"
    report = run_eval(small(stories260k, tmp_path / "out", suite="diversity", prompt=prompt, samples=3,
                            max_new_tokens=16))
    samples = report["sections"]["diversity"]["samples"]
    assert len(samples) == 3 and all(s.startswith("Once upon a time") and "Features" not in s for s in samples)
    assert "only the story after the prompt's 'Story:'" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
