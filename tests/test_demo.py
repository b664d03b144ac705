import json

import pytest

from talelab.demo import run_demo


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
    report = json.loads((tmp_path / "demo" / "prepared" / "report.json").read_text())
    assert "1/6 prepare: recase, clean" in out and report["rules"][0]["rule"] == "recase"
    assert report["rules"][0]["changed"] > 5000 and report["documents_out"] > 5000  # the lowercased head, recased
