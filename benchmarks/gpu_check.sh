#!/usr/bin/env bash
# The first minutes on a machine with a GPU (issue 20): every CUDA path talelab has, once, with a table at the end.
#
#   benchmarks/gpu_check.sh            on CUDA, about 8 minutes
#   benchmarks/gpu_check.sh --dry-run  the same commands on the CPU at the smallest size (CI runs it so it cannot rot)
#
# Needs the shared data (../shared or TALELAB_DATA) and talelab on PATH (or .venv/bin). Exit code: the failed checks.
# In --dry-run: float16 becomes bfloat16 (fp16 needs CUDA's grad scaler), and checks that only a GPU can answer, or
# that take minutes on 2 CPU cores, are listed as "skipped" with the reason: torch.compile (20-60 s per compile), the
# sync-debug mode.
set -u
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
DATA="${TALELAB_DATA:-$(cd .. && pwd)/shared}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if ((DRY)); then
    DEVICE=cpu FP16=bfloat16 STEPS=2 MINUTES=0.02 BATCHES=2
    export OMP_NUM_THREADS=1
    GPU="import sys"  # the CPU stands in for the GPU
else
    DEVICE=cuda FP16=float16 STEPS=20 MINUTES=0.1 BATCHES=2,4,8
    GPU="import torch; assert torch.cuda.is_available(), 'no CUDA device'"
fi
TRAIN=(talelab train --preset tiny --data "$WORK/prepared" --tokenizer "$WORK/tok" --device "$DEVICE" --no-progress
       --max-steps "$STEPS" --log-interval 1)
ROWS=() FAILED=0

check() {  # check NAME COMMAND...: run it, time it, keep a row of the table
    local name=$1 started=$SECONDS status=ok
    shift
    echo "== $name: $*" >&2
    if ! "$@" >"$WORK/log" 2>&1; then
        status=FAILED FAILED=$((FAILED + 1))
        tail -n 20 "$WORK/log" >&2
    fi
    ROWS+=("$(printf '%-34s %-8s %5ss' "$name" "$status" $((SECONDS - started)))")
}

skip() { ROWS+=("$(printf '%-34s %-8s %s' "$1" skipped "$2")"); }

falling_loss() {  # falling_loss RUN: finite losses, the last below the first
    python - "$1" <<'EOF'
import json, math, sys
loss = [r["loss"] for r in map(json.loads, open(f"{sys.argv[1]}/metrics.jsonl")) if "loss" in r]
assert loss and all(map(math.isfinite, loss)) and loss[-1] < loss[0], loss
EOF
}

train_run() {  # train_run NAME ARGS...: train, then check the loss
    local out="$WORK/$1"
    shift
    "${TRAIN[@]}" --out "$out" "$@" && falling_loss "$out"
}

# data: the first 400 shared stories and a 512-token BPE
check "data + tokenizer" bash -c "talelab prepare --source '$DATA/data/tinystories/train-head.txt' --max-documents 400 \
    --out '$WORK/prepared' && talelab tokenizer train --data '$WORK/prepared' --out '$WORK/tok' --vocab-size 512"
check "python sees the device" python -c "$GPU"

# training in each precision
check "train fp32" train_run fp32 --dtype float32
check "train bf16" train_run bf16 --dtype bfloat16
check "train fp16" train_run fp16 --dtype "$FP16"
check "train fp16 --grad-accum 2" train_run fp16-accum --dtype "$FP16" --grad-accum 2
auto_dtype() {  # --dtype auto: bfloat16 on CUDA (fp32 matmuls there may use TF32), float32 on the CPU; recorded
    "${TRAIN[@]}" --out "$WORK/auto" && python - "$WORK/auto" "$DEVICE" <<'EOF'
import pathlib, sys
import torch
from talelab.devices import pick_device
from talelab.models.storage import read_config, resolve_model_dir

dtype = read_config(resolve_model_dir(pathlib.Path(sys.argv[1])))["train"]["dtype"]
assert dtype == ("bfloat16" if sys.argv[2] == "cuda" else "float32"), dtype
pick_device(sys.argv[2])
assert sys.argv[2] == "cpu" or torch.get_float32_matmul_precision() == "high"
EOF
}
check "train --dtype auto (+ TF32 on cuda)" auto_dtype
check "train GQA (2 kv heads of 4)" train_run gqa --n-kv-heads 2
if ((DRY)); then skip "train --compile" "compiling takes 20-60 s on CPU"; else
    check "train --compile" train_run compiled --compile; fi

# resume on the device; the checkpoint loads on the CPU
check "resume on $DEVICE" "${TRAIN[@]}" --out "$WORK/fp32" --resume --max-steps $((STEPS + 2))
check "load the checkpoint on cpu" python -c "from talelab.models.storage import load_model
m, _, _ = load_model('$WORK/fp32', device='cpu'); assert next(m.parameters()).device.type == 'cpu'"

# two processes with a time budget, under a hard timeout (each rank once stopped on its own clock and hung)
# --grad-accum 2: the first micro-batch's gradients stay on each rank (no_sync / set_requires_gradient_sync); FSDP
# gathers bf16 weights under auto (MixedPrecisionPolicy)
for wrap in ddp fsdp; do
    flags=()
    [[ $wrap == fsdp ]] && flags=(--fsdp)
    check "torchrun --max-minutes ($wrap)" timeout 120 python -m torch.distributed.run --standalone \
        --nproc_per_node 2 -m talelab train --preset tiny --data "$WORK/prepared" --tokenizer "$WORK/tok" \
        --device "$DEVICE" --no-progress --batch-size 8 --max-minutes "$MINUTES" --max-steps 1000000 \
        --grad-accum 2 --out "$WORK/torchrun-$wrap" "${flags[@]}"
done
if ((DRY)); then skip "torchrun --compile (ddp)" "compiling takes 20-60 s on CPU"; else
    check "torchrun --compile (ddp)" timeout 300 python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m talelab train --preset tiny --data "$WORK/prepared" --tokenizer "$WORK/tok" --device "$DEVICE" \
        --no-progress --batch-size 8 --max-steps "$STEPS" --compile --out "$WORK/torchrun-compiled"; fi

# decoding
GENERATE=(talelab generate --model "$WORK/fp32" --device "$DEVICE" --max-new-tokens 16 --seed 0)
check "generate fp32" "${GENERATE[@]}" --dtype float32
check "generate bf16" "${GENERATE[@]}" --dtype bfloat16
check "generate beam search" "${GENERATE[@]}" --num-beams 4 --temperature 0
check "generate --device auto --dtype auto" talelab generate --model "$WORK/fp32" --max-new-tokens 16 --seed 0
if ((DRY)); then check "generate int8 (cpu)" "${GENERATE[@]}" --dtype int8; else
    check "generate int8 on cuda: one-line refusal" bash -c "! ${GENERATE[*]} --dtype int8 2>'$WORK/int8.err' &&
        [[ \$(wc -l <'$WORK/int8.err') == 1 ]] && grep -q 'int8 quantizes for the CPU' '$WORK/int8.err'"; fi
check "eval loss --dtype auto" talelab eval loss --model "$WORK/fp32" --device "$DEVICE"
check "interpret attention + neurons" bash -c "for what in attention neurons; do talelab interpret \$what \
    --model '$WORK/fp32' --device '$DEVICE' --data '$DATA/data/tinystories/valid-head.txt' --samples 4 \
    --out '$WORK/interpret-'\$what --no-progress || exit 1; done"
if ((DRY)); then skip "generate --compile" "compiling takes 20-60 s on CPU"; else
    check "generate --compile (recompiles logged)" env TORCH_LOGS=recompiles "${GENERATE[@]}" --compile --num-samples 4; fi
# padded prompts on a GQA model (masked attention repeats the kv heads on CUDA): each greedy row equals its
# prompt decoded alone; host syncs are printed (one per step is expected: the tokens come back to the host)
check "generate_batch, padded prompts (GQA)" python - "$WORK/gqa" "$DEVICE" <<'EOF'
import sys
import torch
from talelab.config import SamplingConfig
from talelab.decoding_batch import generate_batch
from talelab.generate import generate
from talelab.models.storage import load_model

model, tokenizer, _ = load_model(sys.argv[1], device=sys.argv[2])
assert model.config.n_kv_heads < model.config.n_heads
prompts = [tokenizer.encode(p) for p in ("Once upon a time", "Tom", "The little dog ran to the park and")]
greedy = SamplingConfig(max_new_tokens=12, temperature=0)
alone = [generate(model, p, greedy, None)[0] for p in prompts]
if sys.argv[2] == "cuda":
    torch.cuda.set_sync_debug_mode("warn")
out = generate_batch(model, prompts, [greedy] * 3, None)
torch.cuda.set_sync_debug_mode(0) if sys.argv[2] == "cuda" else None
assert [row.tokens for row in out] == alone, (out, alone)
EOF
check "memory tiny" talelab memory tiny --device "$DEVICE" --batch-sizes "$BATCHES" --out "$WORK/memory"
if ((DRY)); then skip "memory --memory-limit-gb (cuda)" "the GPU cap is set_per_process_memory_fraction"; else
    check "memory --memory-limit-gb: oom cells, not failures" bash -c "talelab memory tiny --device cuda \
        --batch-sizes 2,4096 --memory-limit-gb 0.05 --out '$WORK/memory-cap' && grep -q oom '$WORK/memory-cap/memory.md' \
        && grep -q ' / ' '$WORK/memory-cap/memory.md'"; fi

# the server under 16 concurrent requests
check "serve, 16 concurrent requests" python - "$WORK/fp32" "$DEVICE" <<'EOF'
import json, socket, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(["talelab", "serve", "--model", f"tiny={sys.argv[1]}", "--device", sys.argv[2],
                           "--port", str(port), "--max-concurrent", "16"])
url = f"http://127.0.0.1:{port}"
try:
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    def complete(i):
        body = json.dumps({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 16, "seed": i}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["text"]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(complete, range(16)))
    assert len(texts) == 16 and all(isinstance(t, str) for t in texts)
finally:
    server.terminate()
    server.wait()
EOF

# the CUDA tests of the suite (train in every precision, resume, load on CPU); they skip without a GPU
if ((DRY)); then skip "pytest -m cuda" "the CUDA tests skip without a GPU"; else
    check "pytest -m cuda" python -m pytest -q -m cuda tests; fi
# three steps of LoRA fine-tuning and of DPO on the tiny model exported to Hugging Face, in mixed precision
check "finetune 3 steps (bf16 on cuda)" talelab finetune --base "$WORK/fp32" --task lm \
    --data "$WORK/prepared/train.jsonl" --out "$WORK/ft" --max-steps 3 --batch-size 4 --max-length 64 --samples 0 \
    --no-progress
check "dpo 3 steps (bfloat16)" bash -c "talelab prefs build --data '$WORK/prepared' --out '$WORK/pairs.jsonl' \
    --max-pairs 26 --prompt-fraction 0.1 && talelab dpo --base '$WORK/fp32' --data '$WORK/pairs.jsonl' --out '$WORK/dpo' \
    --batch-size 8 --max-length 64 --dtype bfloat16 --no-progress"
# float16 (T4-class GPUs have no bfloat16): Trainer's fp16 path, autocast with loss scaling; dpo loads float16
# weights under float32 LoRA weights
check "finetune 3 steps ($FP16)" talelab finetune --base "$WORK/fp32" --task lm --data "$WORK/prepared/train.jsonl" \
    --out "$WORK/ft16" --max-steps 3 --batch-size 4 --max-length 64 --samples 0 --dtype "$FP16" --no-progress
check "dpo 3 steps ($FP16)" talelab dpo --base "$WORK/fp32" --data "$WORK/pairs.jsonl" --out "$WORK/dpo16" \
    --batch-size 8 --max-length 64 --dtype "$FP16" --no-progress

printf '\n%-34s %-8s %s\n' check status time
printf '%s\n' "${ROWS[@]}"
exit "$FAILED"
