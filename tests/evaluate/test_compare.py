"""`talelab compare`: the headline figures of several reports side by side, printed and written."""

import csv
import json

import pytest

from talelab.cli import main
from talelab.evaluate.compare import compare_reports
from talelab.evaluate.report import run_eval

from .test_report import small


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory, tiny_run, stories260k):
    """Real reports of the tiny run and stories260K (likelihood and diversity, CI-sized)."""
    root = tmp_path_factory.mktemp("compare")
    paths = []
    for name, model in (("tiny", tiny_run), ("stories260K", stories260k)):
        run_eval(small(model, root / name, suite="likelihood,diversity", samples=3, max_new_tokens=30))
        paths.append(root / name / "report.json")
    return paths


@pytest.mark.slow
def test_compare_prints_and_writes_the_headline_figures_side_by_side(capsys, tmp_path, two_reports):
    code = main(["compare", *map(str, two_reports), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == "| figure | tiny | stories260K |"
    bpb_line = next(line for line in out.splitlines() if line.startswith("| likelihood.bits_per_byte |"))
    assert bpb_line.endswith("| 0.975 |")
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        rows = {row["figure"]: row for row in csv.DictReader(f)}
    reports = [json.loads(p.read_text()) for p in two_reports]
    for figure in ("likelihood.bits_per_byte", "diversity.self_bleu", "parameters"):
        assert float(rows[figure]["tiny"]) == pytest.approx(reports[0]["headline"][figure])
        assert float(rows[figure]["stories260K"]) == pytest.approx(reports[1]["headline"][figure])
    assert "likelihood.bits_per_byte" in (tmp_path / "cmp" / "compare.md").read_text()


def write_report(path, name, headline):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "headline": headline, "sections": {}}))
    return path


def test_figures_missing_from_a_report_show_as_n_a_and_equal_names_are_told_apart(tmp_path):
    a = write_report(tmp_path / "a" / "report.json", "model", {"likelihood.bits_per_byte": 1.25, "x": 2})
    write_report(tmp_path / "b" / "report.json", "model", {"likelihood.bits_per_byte": 0.5, "y": None})
    markdown = compare_reports([str(a), str(tmp_path / "b")], tmp_path / "out")  # a report directory works too
    lines = markdown.splitlines()
    assert lines[0] == f"| figure | model ({a}) | model ({tmp_path / 'b'}) |"
    assert lines[2:] == ["| likelihood.bits_per_byte | 1.25 | 0.5 |", "| x | 2 | n/a |", "| y | n/a | n/a |"]
    with open(tmp_path / "out" / "compare.csv", newline="") as f:
        assert list(csv.reader(f))[1:] == [["likelihood.bits_per_byte", "1.25", "0.5"], ["x", "2", ""], ["y", "", ""]]


def test_compare_bad_input_is_one_line(capsys, tmp_path):
    good = write_report(tmp_path / "good.json", "m", {"a": 1})
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"step": 3}))
    for argv, needle in ((["compare", str(good)], "at least two"),
                         (["compare", str(good), str(junk)], "junk.json"),
                         (["compare", str(good), str(other)], "other.json"),
                         (["compare", str(good), str(tmp_path / "ghost.json")], "ghost.json")):
        code = main([*argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and needle in err[0], err
