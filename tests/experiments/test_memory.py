import pytest

from talelab.cli import main
from talelab.experiments.memory import memory_table


@pytest.mark.slow
def test_memory_table_reports_peaks_and_oom_instead_of_crashing(tmp_path):
    rows = memory_table(["tiny", "110m"], [2], vocab_size=2048, device="cpu", dtype="float32", out=tmp_path,
                        memory_limit_gb=2.0, log=lambda *_: None)
    tiny, big = rows
    assert 100 < float(tiny["2"].replace(",", "")) < 2048  # MB, under the cap
    assert big["2"] == "oom"  # 110M parameters, their gradients and AdamW moments need more than 2 GB
    assert "| 110m | oom |" in (tmp_path / "memory.md").read_text()


@pytest.mark.slow
def test_a_cell_is_the_child_s_own_peak_even_from_a_larger_parent(tmp_path):
    """Measured from a process holding 1.5 GB (a notebook, a long test session), the tiny model's cell is its own
    peak: ru_maxrss would have reported the parent's."""
    ballast = b"\x01" * (1536 * 2**20)  # touched pages: resident
    (row,) = memory_table(["tiny"], [2], vocab_size=2048, device="cpu", dtype="float32", out=tmp_path,
                          log=lambda *_: None)
    assert len(ballast) and 100 < float(row["2"].replace(",", "")) < 1536


@pytest.mark.slow
def test_a_grid_over_families_measures_each_configuration_of_the_base_preset(tmp_path, capsys):
    assert main(["memory", "--grid", "family=transformer,compressor", "--base-preset", "tiny", "--batch-sizes",
                 "2,4", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "memory.md").read_text()
    for row in ("| tiny-familytransformer |", "| tiny-familycompressor |"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert all(100 < float(cell.replace(",", "")) < 2048 for cell in line.strip("|").split("|")[1:]), line
    assert main(["memory", "--grid", "family=transformer,compressor", "--base-preset", "tiny", "--grid",
                 "widthh=3", "--out", str(tmp_path)]) == 2  # an unknown key fails before any child starts
    assert "widthh" in capsys.readouterr().err


def test_memory_command_rejects_unknown_presets_and_bad_batch_sizes(capsys, tmp_path):
    assert main(["memory", "ts-99m", "--out", str(tmp_path)]) == 2
    assert main(["memory", "tiny", "--batch-sizes", "2,x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "ts-99m" in err[0] and "--batch-sizes" in err[1]
