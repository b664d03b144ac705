"""Two processes on CPU with gloo, as CI runs them: DDP and FSDP2 reproduce a one-process run, and checkpoints move
between world sizes and wrappings (1 process <-> 2 processes, DDP <-> FSDP) and continue as if never stopped; rank 0
alone pretokenizes a fresh prepared folder while the other waits.

One torchrun launch (tests/train/torchrun_jobs.py) runs every two-process case: starting processes is the slow part.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from talelab.config import SamplingConfig, build_train_configs
from talelab.data.shards import SPLITS, load_shard, pretokenize, shard_directory
from talelab.errors import ConfigError
from talelab.generate import generate_text
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.tokenizer import load_tokenizer
from talelab.train.checkpoint import load_trainer_state
from talelab.train.distributed import Ranks, shard
from talelab.train.loop import epoch_steps, train

pytestmark = pytest.mark.slow  # every test here starts processes or waits for the torchrun launch below

JOBS = Path(__file__).with_name("torchrun_jobs.py")
QUIET = lambda *_: None  # noqa: E731


def losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def moments(run_dir, step: int) -> dict[str, torch.Tensor]:
    """AdamW's first and second moments of every parameter, by parameter name."""
    state = load_trainer_state(run_dir / "checkpoints" / f"step-{step:08d}")["optimizer"]["state"]
    return {f"{name}.{k}": v for name, s in state.items() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")}


def assert_close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_configs, prepared, bpe_dir):
    """A one-process run of 12 steps (global batch 8), and two-process runs: DDP and FSDP for 10 of the same 12-step
    schedule (4 rows per rank), the one-process run's step-10 checkpoint continued to 12 by FSDP and by DDP, a
    batch that two processes cannot split, and runs on prepared folders with no shards yet: one sound (trained for
    --epochs), one with a broken line in train.jsonl."""
    root = tmp_path_factory.mktemp("distributed")
    common = dict(batch_size=8, max_steps=12, schedule_steps=12, log_interval=1)
    model_config, one = tiny_configs(root / "one", **common)
    train(model_config, one, log=QUIET)
    train(*tiny_configs(root / "one-accum", **common, grad_accum=2), log=QUIET)
    for name in ("one-to-fsdp", "one-to-ddp"):  # as if the one-process run had been killed after step 10
        shutil.copytree(root / "one", root / name)
        shutil.rmtree(root / name / "checkpoints" / "step-00000012")
        (root / name / "latest").write_text("checkpoints/step-00000010\n")
    for name in ("fresh", "broken"):  # prepared folders with no shards yet, which both ranks would write
        (root / name).mkdir()
        for split in ("train.jsonl", "val.jsonl", "test.jsonl"):
            shutil.copy(prepared / split, root / name / split)
    with open(root / "broken" / "train.jsonl", "a", encoding="utf-8") as f:
        f.write("not JSON\n")  # found by rank 0 only, at the end of its pretokenizing
    base = ["train", "--preset", "tiny", "--data", prepared, "--tokenizer", bpe_dir, "--batch-size", 8,
            "--max-steps", 10, "--schedule-steps", 12, "--log-interval", 1, "--no-progress"]
    jobs = [[0, base + ["--out", root / "ddp"]],
            [0, base + ["--out", root / "fsdp", "--fsdp"]],
            [0, base + ["--out", root / "ddp-accum", "--grad-accum", 2]],
            [0, base + ["--out", root / "fsdp-accum", "--fsdp", "--grad-accum", 2]],
            [0, ["train", "--out", root / "one-to-fsdp", "--resume", "--fsdp", "--no-progress"]],
            [0, ["train", "--out", root / "one-to-ddp", "--resume", "--no-progress"]],
            [2, base + ["--out", root / "odd", "--batch-size", 7]],
            [0, base + ["--data", root / "fresh", "--out", root / "fresh-run", "--epochs", 0.02]],
            [2, base + ["--data", root / "broken", "--out", root / "broken-run"]]]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(JOBS),
               json.dumps([[code, [str(a) for a in argv]] for code, argv in jobs])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    # the two-process checkpoints continue in one process: their data state is the global batch's
    for name in ("ddp", "fsdp"):
        train(*tiny_configs(root / name, **common), resume=True, log=QUIET)
    return root, done.stdout, done.stderr


def test_two_processes_with_batch_b_each_match_one_process_with_batch_2b(runs):
    root, stdout, _ = runs
    # FSDP really shards: rank 0 holds about half of the 43,168 parameters (a row more where a dimension is odd)
    total, held = re.search(r"model: ([\d,]+) parameters.*FSDP: ([\d,]+) parameters held by each", stdout).groups()
    assert int(total.replace(",", "")) / 2 <= int(held.replace(",", "")) < int(total.replace(",", "")) * 0.55
    one = losses(root / "one")
    for name in ("ddp", "fsdp"):
        run = losses(root / name)
        assert list(run) == list(range(1, 13))  # 10 steps on two processes, 2 more in one after resuming
        assert [run[s] for s in range(1, 11)] == pytest.approx([one[s] for s in range(1, 11)], abs=1e-5), name
        assert_close(weights(root / name, 10), weights(root / "one", 10))


def test_accumulated_micro_batches_sync_once_and_still_match_one_process(runs):
    """Under --grad-accum, DDP (no_sync) and FSDP (set_requires_gradient_sync) only add the first micro-batch's
    gradients up on each rank and average the sum with the last one: the same steps as one process."""
    root = runs[0]
    one = losses(root / "one-accum")
    for name in ("ddp-accum", "fsdp-accum"):
        run = losses(root / name)
        assert [run[s] for s in range(1, 11)] == pytest.approx([one[s] for s in range(1, 11)], abs=1e-5), name
        assert_close(weights(root / name, 10), weights(root / "one-accum", 10))


def test_each_rank_draws_its_own_dropout_masks_and_the_checkpoint_keeps_every_rank_s_generator(runs):
    root = runs[0]
    for name in ("ddp", "fsdp"):
        generators = load_trainer_state(root / name / "checkpoints" / "step-00000010")["rank_rngs"]
        assert len(generators) == 2 and not torch.equal(generators[0][0], generators[1][0]), name


def test_an_fsdp_checkpoint_holds_whole_weights_and_optimizer_state_that_load_model_reads(runs):
    root, _, _ = runs
    # gathered from the shards: the same tensors under the same names as the one-process run's checkpoint
    assert_close(moments(root / "fsdp", 10), moments(root / "one", 10))
    model, tokenizer, raw = load_model(root / "fsdp" / "checkpoints" / "step-00000010")
    assert raw["train"]["fsdp"] is True and raw["parameters"] == model.num_parameters()
    assert model.lm_head.weight is model.embed.weight  # tied embeddings stay tied through the gather
    story = generate_text(model, tokenizer, SamplingConfig(max_new_tokens=8, temperature=0, seed=0))[0]
    assert story.startswith("Once upon a time") and len(story) > len("Once upon a time")


@pytest.mark.parametrize("name", ["fsdp", "ddp"])
def test_a_two_process_checkpoint_resumes_in_one_process_as_if_never_stopped(runs, name):
    root, _, _ = runs
    one, resumed = losses(root / "one"), losses(root / name)
    assert [resumed[11], resumed[12]] == pytest.approx([one[11], one[12]], abs=1e-5)
    assert_close(weights(root / name, 12), weights(root / "one", 12))
    assert_close(moments(root / name, 12), moments(root / "one", 12))


@pytest.mark.parametrize("name", ["one-to-fsdp", "one-to-ddp"])
def test_a_one_process_checkpoint_resumes_in_two_processes_as_if_never_stopped(runs, name):
    root, _, _ = runs
    one, resumed = losses(root / "one"), losses(root / name)
    assert list(resumed) == list(range(1, 13))
    assert [resumed[11], resumed[12]] == pytest.approx([one[11], one[12]], abs=1e-5)
    assert_close(weights(root / name, 12), weights(root / "one", 12))
    assert_close(moments(root / name, 12), moments(root / "one", 12))


def test_a_world_size_that_does_not_divide_the_batch_is_refused(runs):
    _, _, stderr = runs
    # each rank says it in one line (the two may interleave on the shared stderr), and no traceback
    assert stderr.count("talelab: error: batch_size 7 is not divisible by the world size 2: every process needs an "
                        "equal share of the global batch") == 2 and "Traceback" not in stderr
    with pytest.raises(ConfigError, match="batch_size 10 is not divisible by the world size 4"):
        Ranks(rank=1, world_size=4).rows(10)
    assert Ranks(rank=1, world_size=4).rows(8) == slice(2, 4)


def test_under_torchrun_rank_0_pretokenizes_while_the_other_rank_waits_then_both_train_on_its_shards(runs, prepared,
                                                                                                      bpe_dir):
    root, _, stderr = runs
    tokenizer = load_tokenizer(bpe_dir)
    fresh = shard_directory(root / "fresh", tokenizer)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(f"{split}.{suffix}" for split in SPLITS
                                                              for suffix in ("bin", "starts.npy", "json"))
    # the same files as one process writes for the same text and tokenizer (no interleaved writes)
    alone = pretokenize(prepared, tokenizer, progress=False)
    for split in SPLITS:
        for suffix in ("bin", "starts.npy", "json"):
            assert (fresh / f"{split}.{suffix}").read_bytes() == (alone / f"{split}.{suffix}").read_bytes()
    train_tokens = len(load_shard(fresh, "train").tokens)
    assert list(losses(root / "fresh-run")) == list(range(1, epoch_steps(0.02, train_tokens, 8 * 64) + 1))
    # rank 0 meets the broken line and says so; rank 1, which waited for it, stops too instead of waiting forever
    assert f"{root / 'broken' / 'train.jsonl'}:" in stderr
    assert stderr.count("rank 0 could not pretokenize the prepared data") == 1
    assert list(shard_directory(root / "broken", tokenizer).iterdir()) == []  # not even a partial temporary file


def test_under_torchrun_a_time_budget_stops_every_rank_at_the_same_step(tmp_path, prepared, bpe_dir):
    """Each rank once read the budget off its own clock, so one rank left the loop a step before the other and
    waited in the checkpoint's collectives for a rank still waiting in a training all-reduce: a hang, every time.
    Ranks now share one clock, so both stop at the same step and the launch ends."""
    argv = ["train", "--preset", "tiny", "--data", prepared, "--tokenizer", bpe_dir, "--out", tmp_path / "run",
            "--batch-size", 8, "--max-minutes", 0.1, "--max-steps", 1_000_000, "--log-interval", 1, "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(JOBS),
               json.dumps([[0, [str(a) for a in argv]]])]
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = launch.communicate(timeout=120)  # about 20 s: starting two processes, then 6 s of training
    except subprocess.TimeoutExpired:
        launch.terminate()  # torchrun passes it on to its workers, which run in sessions of their own
        launch.communicate(timeout=60)
        pytest.fail("the two ranks did not finish within 120 s of a 6 s time budget (a rank is stuck in a collective)")
    assert launch.returncode == 0, stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    assert 1 < last["step"] < 1_000_000 and last["elapsed_s"] >= 6  # the budget, not max_steps, ended the run
    assert (tmp_path / "run" / "latest").read_text().strip() == f"checkpoints/step-{last['step']:08d}"


def test_fsdp_refuses_recurrent_models_which_have_no_blocks_to_shard():
    model_config, _ = build_train_configs("lstm-5m", overrides={"model": {"vocab_size": 64}})
    with pytest.raises(ConfigError, match="lstm family"):
        shard(build_model(model_config), Ranks(rank=0, world_size=2))
