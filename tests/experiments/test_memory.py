from talelab.cli import main
from talelab.experiments.memory import memory_table


def test_memory_table_reports_peaks_and_oom_instead_of_crashing(tmp_path):
    rows = memory_table(["tiny", "110m"], [2], vocab_size=2048, device="cpu", dtype="float32", out=tmp_path,
                        memory_limit_gb=2.0, log=lambda *_: None)
    tiny, big = rows
    assert 100 < float(tiny["2"].replace(",", "")) < 2048  # MB, under the cap
    assert big["2"] == "oom"  # 110M parameters, their gradients and AdamW moments need more than 2 GB
    assert "| 110m | oom |" in (tmp_path / "memory.md").read_text()


def test_memory_command_rejects_unknown_presets_and_bad_batch_sizes(capsys, tmp_path):
    assert main(["memory", "ts-99m", "--out", str(tmp_path)]) == 2
    assert main(["memory", "tiny", "--batch-sizes", "2,x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "ts-99m" in err[0] and "--batch-sizes" in err[1]
