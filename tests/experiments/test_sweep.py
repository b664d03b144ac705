import csv
import json

import pytest
import yaml

from talelab.cli import main
from talelab.errors import ConfigError
from talelab.experiments.sweep import metrics_by_axis, parse_budget, parse_grid, plan_runs, sweep


def test_budgets_are_time_or_tokens():
    assert parse_budget("5m") == {"max_minutes": 5.0}
    assert parse_budget("90s") == {"max_minutes": 1.5}
    assert parse_budget("200k") == {"max_tokens": 200_000}
    assert parse_budget("1.5M") == {"max_tokens": 1_500_000}
    for bad in ("0", "0m", "soon", "-3k"):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad)


def test_grid_is_the_product_of_its_axes_with_typed_values():
    combos = parse_grid("d_model=128,256,512 n_layers=8,12 n_heads=2,4,8")
    assert len(combos) == 18 and combos[0] == {"d_model": 128, "n_layers": 8, "n_heads": 2}
    assert parse_grid("lr=0.001,0.002 positions=rope")[1] == {"lr": 0.002, "positions": "rope"}
    with pytest.raises(ConfigError, match="n_layerz"):
        parse_grid("n_layerz=2,3")
    for empty in ("", "d_model=,", " ; "):
        with pytest.raises(ConfigError, match="no combinations"):
            parse_grid(empty)


def test_grids_joined_by_semicolons_list_any_set_of_combinations():
    # e.g. two corners of seed 004's grid, not its whole product; a repeated combination runs once
    combos = parse_grid("d_model=128 n_layers=8 n_heads=2; d_model=512 n_layers=12 n_heads=8,2; d_model=128 "
                        "n_layers=8 n_heads=2")
    assert combos == [{"d_model": 128, "n_layers": 8, "n_heads": 2}, {"d_model": 512, "n_layers": 12, "n_heads": 8},
                      {"d_model": 512, "n_layers": 12, "n_heads": 2}]
    runs = plan_runs(["ts-1m"], "d_model=128,256,512 n_layers=8,12 n_heads=2,4,8", "ts-1m")
    assert len(runs) == 19 and runs[1] == ("ts-1m-d_model128-n_layers8-n_heads2", "ts-1m",
                                           {"d_model": 128, "n_layers": 8, "n_heads": 2})


def test_every_configuration_is_checked_before_the_first_one_trains(tmp_path, capsys, prepared, bpe_dir):
    with pytest.raises(ConfigError, match="sweep run 'ts-99m': unknown preset 'ts-99m'"):
        plan_runs(["ts-1m", "ts-99m"], None, None)
    with pytest.raises(ConfigError, match="sweep run 'tiny-d_model32-n_heads3': .*divisible by n_heads 3"):
        plan_runs([], "d_model=32 n_heads=4,3", "tiny")
    common = ["--data", str(prepared), "--tokenizer", str(bpe_dir), "--out", str(tmp_path / "sweep")]
    assert main(["sweep", "tiny", "ts-99m", "--budget", "6k", *common]) == 2
    assert main(["sweep", "--grid", "n_layerz=2,3", "--budget", "6k", *common]) == 2
    assert main(["sweep", "--grid", "n_layers=,", "--budget", "6k", *common]) == 2
    assert main(["sweep", "tiny", "--budget", "0", *common]) == 2
    assert main(["sweep", "tiny", "--budget", "6k", "--eval-suites", "probes,riddles", *common]) == 2
    assert main(["sweep", "tiny", "--budget", "6k", "--axis-metrics", "loss", *common]) == 2  # val_loss is
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("talelab: error: ") for line in err)
    assert "ts-99m" in err[0] and "n_layerz" in err[1] and "no combinations" in err[2] and "budget" in err[3]
    assert "unknown suite 'riddles'" in err[4] and "'loss' is not a column" in err[5]
    assert not (tmp_path / "sweep" / "tiny").exists()  # the valid run did not start before the bad one was found


@pytest.mark.slow
def test_a_sweep_writes_its_table_and_plots_and_resumes_without_redoing_finished_runs(tmp_path, prepared, bpe_dir):
    common = {"data": str(prepared), "tokenizer": str(bpe_dir)}
    out = tmp_path / "sweep"
    rows = sweep([], "d_model=32,48", "6k", out, common, base_preset="tiny", log=lambda *_: None)
    assert [r["name"] for r in rows] == ["tiny-d_model32", "tiny-d_model48"]
    assert rows[0]["parameters"] < rows[1]["parameters"] and all(r["peak_rss_mb"] > 50 for r in rows)
    for r in rows:  # the child's own peak as it logged it, not wait4's, which carries the parent's
        logged = [json.loads(line) for line in (out / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert r["peak_rss_mb"] == [x for x in logged if "loss" in x][-1]["peak_rss_mb"]
    assert all(r["tokens_seen"] == 11 * 8 * 64 for r in rows)  # 6k tokens of 512-token steps: 11 steps
    table = list(csv.DictReader(open(out / "results.csv")))
    assert [t["name"] for t in table] == ["tiny-d_model32", "tiny-d_model48"]
    assert (out / "bpb_vs_parameters.png").stat().st_size > 1000 and (out / "loss_curves.png").is_file()

    (out / "tiny-d_model48" / "result.json").unlink()  # as if the sweep had been stopped during the second run
    said = []
    again = sweep([], "d_model=32,48", "6k", out, common, base_preset="tiny", log=said.append)
    assert "done earlier" in said[0] and "training" in said[1]
    assert again[1]["tokens_seen"] == rows[1]["tokens_seen"] and again[1]["val_loss"] == rows[1]["val_loss"]

    said = []  # another budget: neither reported nor resumed under settings it never had, but trained again
    longer = sweep([], "d_model=32", "9k", out, common, base_preset="tiny", log=said.append)
    assert "settings changed since it ran" in said[0] and "training" in said[1]
    assert longer[0]["tokens_seen"] == 17 * 8 * 64 and (out / "superseded" / "tiny-d_model32" / "result.json").is_file()


@pytest.mark.slow
def test_a_time_budget_stops_each_run_by_the_clock(tmp_path, prepared, bpe_dir):
    common = {"data": str(prepared), "tokenizer": str(bpe_dir)}
    (row,) = sweep(["tiny"], None, "2s", tmp_path / "timed", common, log=lambda *_: None)
    assert row["tokens_seen"] > 0 and row["tokens_seen"] % (8 * 64) == 0  # whole steps of the tiny preset
    assert row["wall_time_s"] < 30


@pytest.mark.slow
def test_model_and_training_flags_apply_to_every_run_under_its_grid_values(tmp_path, prepared, bpe_dir, capsys):
    out = tmp_path / "flags"
    assert main(["sweep", "tiny", "--grid", "d_model=32,48 lr=0.002", "--base-preset", "tiny", "--budget", "2k",
                 "--data", str(prepared), "--tokenizer", str(bpe_dir), "--out", str(out), "--lr", "0.005",
                 "--dropout", "0.05", "--n-layers", "1"]) == 0
    configs = {run: yaml.safe_load((out / run / "sweep-config.yaml").read_text())
               for run in ("tiny", "tiny-d_model32-lr0.002", "tiny-d_model48-lr0.002")}
    assert {run: (c["model"]["d_model"], c["model"]["n_layers"], c["model"]["dropout"], c["train"]["lr"])
            for run, c in configs.items()} == {"tiny": (32, 1, 0.05, 0.005),
                                               "tiny-d_model32-lr0.002": (32, 1, 0.05, 0.002),
                                               "tiny-d_model48-lr0.002": (48, 1, 0.05, 0.002)}


@pytest.mark.slow
def test_a_grid_sweep_evaluates_every_run_plots_each_axis_and_redoes_nothing_when_run_again(
        tmp_path, prepared, bpe_dir, shared, capsys):
    # three runs, not the full 2 x 2 product: both keys still take two values; one probe set keeps the evals short
    out = tmp_path / "grid"
    command = ["--data-root", str(shared), "sweep", "--grid", "d_model=16,32 n_layers=1; d_model=16 n_layers=2",
               "--base-preset", "tiny", "--budget", "2k", "--data", str(prepared), "--tokenizer", str(bpe_dir),
               "--out", str(out), "--eval-suites", "probes", "--eval-probe-sets", "factual", "--axis-metrics",
               "val_loss", "probes.accuracy.factual"]
    assert main(command) == 0
    runs = ["tiny-d_model16-n_layers1", "tiny-d_model32-n_layers1", "tiny-d_model16-n_layers2"]
    table = list(csv.DictReader(open(out / "results.csv")))
    assert [t["name"] for t in table] == runs
    assert 0 <= float(table[0]["probes.accuracy.factual"]) <= 1 and "probes.accuracy.factual" in (
        out / "results.md").read_text()
    for run in runs:
        assert json.loads((out / run / "eval" / "report.json").read_text())["sections"]["probes"]["status"] == "ok"
        assert f"--data-root {shared} eval" in (out / run / "eval.log").read_text()  # the data root reached it
    for plot in ("axis_d_model.png", "axis_n_layers.png", "train_loss_curves.png", "loss_curves.png"):
        assert (out / plot).stat().st_size > 1000 and plot in (out / "results.md").read_text()
    assert not (out / "axis_n_heads.png").exists()

    finished = {path: path.stat().st_mtime_ns for run in runs
                for path in (out / run / "result.json", out / run / "eval" / "report.json")}
    capsys.readouterr()
    assert main(command) == 0
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # nothing trained or evaluated again
    said = capsys.readouterr().out
    assert said.count("done earlier") == 3 and "training" not in said and "evaluating" not in said
    assert main([*command, "--eval-seed", "7"]) == 0  # other eval settings: every run evaluated again, none trained
    said = capsys.readouterr().out
    assert said.count("evaluating") == 3 and said.count("done earlier") == 3

    assert main([*command[:-2], "probes.accuracy.factuel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'probes.accuracy.factuel' is not a column" in err[0] and "val_bpb" in err[0]


def test_each_grid_key_with_several_values_is_an_axis_with_a_line_per_combination_of_the_others():
    axes = {"a": {"d_model": 16, "n_layers": 1}, "b": {"d_model": 32, "n_layers": 1},
            "c": {"d_model": 16, "n_layers": 2}, "d": {"d_model": 64, "n_heads": 4}}  # d: from a second ';' grid
    table = [{"name": name, "val_loss": loss} for name, loss in zip("abcd", (3.0, 2.5, 2.8, 2.0))]
    table.append({"name": "tiny", "val_loss": 1.0})  # a preset run: on no axis
    by_axis = metrics_by_axis(table, axes, ["val_loss"])
    assert list(by_axis) == ["d_model", "n_layers"]  # n_heads takes one value
    assert by_axis["d_model"] == ([16, 32, 64], {"val_loss": {"n_layers=1": [3.0, 2.5, None],
                                                              "n_layers=2": [2.8, None, None],
                                                              "n_heads=4": [None, None, 2.0]}})
    assert by_axis["n_layers"] == ([1, 2], {"val_loss": {"d_model=16": [3.0, 2.8], "d_model=32": [2.5, None]}})


def test_loss_against_judge_grades_by_hand(tmp_path):
    """Spearman by hand: losses rank 1..4; plot grades 5, 3.5, 4, 3 rank 4, 2, 3, 1, so d = -3, 0, 0, 3,
    rho = 1 - 6 * 18 / (4 * 15) = -0.8; grammar falls as loss rises: -1."""
    from talelab.experiments.sweep import loss_against_grades

    table = [{"name": f"r{i}", "val_loss": loss, "judge.categories.grammar.mean": grammar,
              "judge.categories.plot.mean": plot}
             for i, (loss, grammar, plot) in enumerate([(2.0, 5, 3), (1.5, 6, 4), (1.2, 8, 3.5), (1.0, 9, 5)])]
    columns = ["judge.categories.grammar.mean", "judge.categories.plot.mean"]
    (losses, panels), rhos, runs = loss_against_grades(table, columns)
    assert losses == [1.0, 1.2, 1.5, 2.0] and runs == 4
    assert rhos["grammar"] == pytest.approx(-1.0) and rhos["plot"] == pytest.approx(-0.8)
    assert panels["plot (Spearman -0.80)"] == {"": [5, 3.5, 4, 3]}
    assert loss_against_grades(table[:2], columns) is None  # two runs say nothing
    assert loss_against_grades(table, []) is None  # no judge columns
