"""float16 mixed precision on CUDA (`pytest -m cuda`, which benchmarks/gpu_check.sh runs; skipped without a GPU):
finetune autocasts float32 weights, dpo trains float32 LoRA weights over float16 ones, both with loss scaling."""

from __future__ import annotations

import gzip
import json
import math

import pytest
from safetensors.torch import load_file

from talelab.config import PreferenceConfig
from talelab.finetune.base import precision_flags
from talelab.finetune.dpo import run_dpo, split_dialogue
from talelab.finetune.sft import finetune


@pytest.mark.cuda
def test_float16_fine_tunes_and_aligns_on_cuda(stories260k_hf, shared, quick, tmp_path):
    assert precision_flags("float16") == {"bf16": False, "fp16": True, "use_cpu": False}
    sft = finetune(quick(base=str(stories260k_hf), task="lm", data="data/poetry/shakespeare-sonnets.txt",
                         out=str(tmp_path / "sft"), max_steps=3, dtype="float16"), log=lambda _: None)
    assert sft["steps"] == 3 and math.isfinite(sft["train_loss"]) and math.isfinite(sft["eval_loss"])
    with gzip.open(shared / "data/preference/hh-rlhf-harmless-test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if len(r["chosen"]) < 300][:40]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(dict(zip(("prompt", "chosen", "rejected"),
                                                 split_dialogue(r["chosen"], r["rejected"])))) + "\n" for r in rows))
    out = tmp_path / "dpo"
    dpo = run_dpo(PreferenceConfig(base=str(stories260k_hf), data=str(pairs), out=str(out), dtype="float16",
                                   max_length=96, batch_size=8, heldout_fraction=0.2, progress=False),
                  log=lambda _: None)
    assert dpo["steps"] > 0 and all(math.isfinite(v) for v in dpo["heldout_after"].values())
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights and all(str(w.dtype) == "torch.float32" for w in weights.values())  # the scaler unscales these
