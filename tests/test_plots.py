"""The loss chart that training from scratch and fine-tuning share: a real PNG of the right shape for each."""

import matplotlib.image
import pytest

from talelab.plots import loss_chart

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
