"""The loss chart that training from scratch and fine-tuning share, and fine-tuning's learning-rate chart: a real
PNG of the right shape for each."""

import matplotlib.image
import pytest

from talelab.plots import learning_rate_chart, loss_chart

RECORDS = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 21)] + [
    {"step": s, "val_loss": 5.2 - s / 12, "val_bpb": 2.0 - s / 30, "elapsed_s": 3.0 * s} for s in (10, 20)]


@pytest.mark.slow
def test_training_from_scratch_gets_a_second_panel_of_bits_per_byte_against_minutes(tmp_path):
    loss_chart(RECORDS, tmp_path / "loss.png", "val_loss", "validation loss", bits_per_byte=True)
    assert matplotlib.image.imread(tmp_path / "loss.png").shape[:2] == (480, 1320)  # 11 x 4 inches at 120 dpi


def test_fine_tuning_gets_one_panel_with_its_held_out_loss_and_title(tmp_path):
    history = [r for r in RECORDS if "loss" in r] + [{"step": 20, "eval_loss": 3.1}]
    loss_chart(history, tmp_path / "loss.png", "eval_loss", "held-out loss", title="lm fine-tuning of tiny")
    assert matplotlib.image.imread(tmp_path / "loss.png").shape[:2] == (480, 720)


def test_learning_rate_chart_draws_the_logged_rate_against_the_step(tmp_path):
    # 10 % warm-up to 2e-4 over 20 steps, then linear decay: the rate as transformers logs it, beside other records
    history = [{"step": s, "loss": 3.0, "learning_rate": 2e-4 * min(s / 2, (20 - s) / 18)} for s in range(1, 21)]
    learning_rate_chart(history + [{"step": 20, "eval_loss": 3.1}], tmp_path / "lr.png", title="stories-tags")
    assert matplotlib.image.imread(tmp_path / "lr.png").shape[:2] == (480, 720)  # 6 x 4 inches at 120 dpi
