"""`talelab dpo`: Direct Preference Optimization with a LoRA adapter, on trl's DPOTrainer.

The reference model is the base itself with the adapter switched off (trl does this when it is given a peft_config
and no ref_model), so memory holds one copy of the base weights. Reward accuracy and margins are measured on held-out
pairs before training, during it and after it.

Output directory:
    adapter/          the trained LoRA adapter + tokenizer (`talelab merge --adapter <out>/adapter` folds it in)
    checkpoints/      resumable trainer checkpoints (optimizer, scheduler, RNG state): `--resume` continues
    metrics.jsonl     every logged record (training steps and held-out evaluations), one JSON object a line
    dpo.png           margins and reward accuracy over steps, training and held-out
    report.md, summary.json
    answers.jsonl     with --questions: the trained model's answers to the question set, beside their references
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer

from talelab.atomic import write_text_atomic
from talelab.config import LoraConfig, PreferenceConfig
from talelab.errors import ConfigError, InputError
from talelab.finetune.base import (MetricsLog, checkpoint_step, format_trainable, load_base, lora_config,
                                   precision_flags, resolve_base, trainable_summary)
from talelab.finetune.questions import question_figures, stored_template
from talelab.paths import resolve_input
from talelab.plots import reward_chart
from talelab.tracking import NO_TRACKER, Tracker, open_tracker
from talelab.train.metrics import read_metrics, restart_metrics

HH_ASSISTANT = "\n\nAssistant:"
PAIR_FIELDS = ("prompt", "chosen", "rejected")
# trl's names for what the report shows, in the order it shows them
HELDOUT_METRICS = {"accuracy": "eval_rewards/accuracies", "margin": "eval_rewards/margins",
                   "chosen_reward": "eval_rewards/chosen", "rejected_reward": "eval_rewards/rejected",
                   "loss": "eval_loss"}


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Anthropic HH: the shared dialogue up to its last '\\n\\nAssistant:' is the prompt; the rest are completions.

    The cut is searched in the common prefix, so a response that itself holds further turns stays whole."""
    cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cut < 0:
        return None
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def read_pairs(data: str, data_root=None, fields: tuple[str, str, str] = PAIR_FIELDS) -> list[dict]:
    """Preference pairs of a JSONL file (gzip-compressed too) as {prompt, chosen, rejected}: rows with the three
    `fields` (prompt, chosen, rejected by default; instruction, chosen_response, rejected_response for UltraFeedback)
    or Anthropic HH rows (chosen and rejected dialogues without a prompt field)."""
    path = resolve_input(data, data_root)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a JSONL file of preference pairs")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    pairs.append(pair_of(line, f"{path}:{number}", fields))
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise InputError(f"{path}: unreadable ({' '.join(str(e).split())[:160]}); expected UTF-8 JSONL, optionally "
                         f"gzip-compressed") from None
    if not pairs:
        raise InputError(f"{path}: no preference pairs (empty file)")
    return pairs


def pair_of(line: str, where: str, fields: tuple[str, str, str] = PAIR_FIELDS) -> dict:
    """One row as {prompt, chosen, rejected} from its `fields`, or an InputError naming file and line."""
    prompt, chosen, rejected = fields
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object with {prompt}, {chosen} and {rejected}, found a JSON "
                         f"{type(row).__name__}")
    if all(isinstance(row.get(k), str) for k in fields):
        return {name: row[k] for name, k in zip(PAIR_FIELDS, fields)}
    if prompt not in row and all(isinstance(row.get(k), str) for k in (chosen, rejected)):
        parts = split_dialogue(row[chosen], row[rejected])
        if parts is None:
            raise InputError(f"{where}: {chosen} and {rejected} share no '\\n\\nAssistant:' turn, so no prompt can "
                             f"be split off (Anthropic HH format expected, or give a '{prompt}' field)")
        return dict(zip(PAIR_FIELDS, parts))
    missing = [k for k in fields if not isinstance(row.get(k), str)]
    raise InputError(f"{where}: a pair needs string fields {prompt}, {chosen} and {rejected} (Anthropic HH rows: "
                     f"{chosen} and {rejected}; other names: --prompt-field, --chosen-field, --rejected-field); "
                     f"missing or not text: {', '.join(missing)} (keys: {', '.join(sorted(row)) or 'none'})")


def hold_out(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs): a seeded random share, at least one pair on each side."""
    if len(pairs) < 2:
        raise InputError(f"only {len(pairs)} preference pair: at least 2 are needed (one to train, one held out)")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held = set(order[:count])
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]


def even_batch(count: int, limit: int) -> int:
    """The largest batch size <= limit that divides count: trl averages per-batch means, so equal batches make the
    held-out figures exact means over pairs."""
    return max(b for b in range(1, max(1, min(count, limit)) + 1) if count % b == 0)


def make_trainer(config: PreferenceConfig, data_root=None, log=lambda line: None, tracker: Tracker = NO_TRACKER):
    """(DPOTrainer with a fresh LoRA adapter, facts for the report): the pairs read, split and handed to trl; its
    records go to metrics.jsonl and `tracker`."""
    precision = precision_flags(config.dtype)  # float16 without a GPU stops here, before anything loads
    pairs = read_pairs(config.data, data_root, (config.prompt_field, config.chosen_field, config.rejected_field))
    if config.max_pairs:
        pairs = pairs[:config.max_pairs]
    train_pairs, heldout_pairs = hold_out(pairs, config.heldout_fraction, config.seed)
    source = resolve_base(config.base, data_root)
    if (Path(source) / "adapter_config.json").is_file():
        raise ConfigError(f"--base {config.base} is a LoRA adapter: merge it first (talelab merge --adapter "
                          f"{config.base} --out <dir>) and pass <dir>, so that the DPO adapter records a base that "
                          f"holds the fine-tuned weights")
    model, tokenizer = load_base(config.base, data_root, dtype=config.dtype, log=log)
    if Path(source).is_dir():  # the adapter records its base: make that path valid from any working directory
        source = model.config._name_or_path = str(Path(source).resolve())
    peft_config = lora_config(model, config.lora)
    steps = math.ceil(config.epochs * math.ceil(len(train_pairs) / (config.batch_size * config.grad_accum)))
    out = Path(config.out)
    args = DPOConfig(
        output_dir=str(out / "checkpoints"), beta=config.beta, learning_rate=config.lr,
        num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length, lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio, eval_strategy="steps", eval_steps=config.eval_steps or max(1, steps // 10),
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        report_to=[],  # --report-to's tracker gets metrics.jsonl's records from MetricsLog
        disable_tqdm=not config.progress, seed=config.seed, data_seed=config.seed, **precision,
        activation_checkpointing=config.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        log_level="warning")
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list(train_pairs), eval_dataset=Dataset.from_list(heldout_pairs),
                         callbacks=[MetricsLog(out / "metrics.jsonl", tracker)])
    trainer.remove_callback(PrinterCallback)  # without a progress bar transformers prints every log dict
    # sized on the pairs left after trl drops those whose prompt fills max_length
    trainer.args.per_device_eval_batch_size = even_batch(len(trainer.eval_dataset), config.batch_size)
    trainable, total, percent = trainable_summary(trainer.model)
    facts = {"base": source, "data": config.data, "pairs": len(pairs), "train_pairs": len(trainer.train_dataset),
             "heldout_pairs": len(trainer.eval_dataset), "dropped_by_max_length": len(pairs) - len(
                 trainer.train_dataset) - len(trainer.eval_dataset), "planned_steps": steps,
             "trainable_params": trainable, "total_params": total, "trainable_percent": percent}
    if not len(trainer.train_dataset) or not len(trainer.eval_dataset):
        raise ConfigError(f"dpo: every {'training' if not len(trainer.train_dataset) else 'held-out'} pair's prompt "
                          f"fills max_length={config.max_length} tokens; raise --max-length")
    return trainer, facts


def heldout_figures(metrics: dict) -> dict:
    return {name: metrics[key] for name, key in HELDOUT_METRICS.items() if key in metrics}


def run_dpo(config: PreferenceConfig, data_root=None, log=print) -> dict:
    """Train the adapter; write adapter/, metrics.jsonl, dpo.png, report.md and summary.json; return the summary."""
    out = Path(config.out)
    checkpoints = out / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if config.resume and last is None:
        raise InputError(f"{checkpoints}: no checkpoint to resume from (run without --resume to start)")
    if not config.resume and last is not None:
        raise ConfigError(f"{out}: already holds a DPO run ({Path(last).name}); pass --resume to continue it or "
                          f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    summary_path = out / "summary.json"
    resumed_step = checkpoint_step(last) if config.resume else None
    _, logged_through = restart_metrics(metrics_path, resumed_step)
    tracker = open_tracker(config.report_to, out, dataclasses.asdict(config), resumed_step, logged_through)
    started = time.perf_counter()
    try:
        trainer, facts = make_trainer(config, data_root, log, tracker)
        log(f"{format_trainable(trainer.model)}; reference: the base with the adapter disabled (no second copy)")
        log(f"{facts['train_pairs']} training pairs, {facts['heldout_pairs']} held out, "
            f"{facts['dropped_by_max_length']} dropped (prompt fills max_length)")
        if config.resume and summary_path.is_file():  # written when the run started
            before = json.loads(summary_path.read_text(encoding="utf-8"))["heldout_before"]
        else:  # the fresh adapter is zero: policy == reference, so every reward is 0 (ties count as wrong)
            before = heldout_figures(trainer.evaluate())
            write_text_atomic(summary_path, json.dumps({"heldout_before": before}, indent=2) + "\n")
        trained = trainer.train(resume_from_checkpoint=last if config.resume else None)
        evaluations = [r for r in trainer.state.log_history if "eval_loss" in r]
        # the trainer may already have evaluated at the last step: evaluating again would log the same figures twice
        done = evaluations and evaluations[-1].get("step") == trainer.state.global_step
        after = heldout_figures(evaluations[-1] if done else trainer.evaluate())
    finally:
        tracker.close()
    trainer.model.save_pretrained(out / "adapter")
    trainer.processing_class.save_pretrained(out / "adapter")
    records = read_metrics(metrics_path, trainer.state.global_step)
    reward_chart(records, out / "dpo.png")
    summary = {**facts, "out": str(out), "steps": trainer.state.global_step, "train_loss": trained.training_loss,
               "heldout_before": before, "heldout_after": after, **answer_questions(trainer, config, data_root, log),
               "wall_seconds": round(time.perf_counter() - started, 1), "config": dataclasses.asdict(config)}
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "report.md", render_report(summary, format_trainable(trainer.model)))
    return summary


def answer_questions(trainer, config: PreferenceConfig, data_root, log) -> dict:
    """{"questions": figures} of the trainer's model on --questions (prompts in the template talelab stored with the
    base, else as instruct data default), answers in answers.jsonl; {} without --questions."""
    if not config.questions:
        return {}
    tokenizer = trainer.processing_class
    return {"questions": question_figures(trainer.model, tokenizer, config.questions, stored_template(tokenizer),
                                          config.max_new_tokens, config.max_length, Path(config.out), log, data_root)}


def evaluate_untrained(config: PreferenceConfig, data_root=None, log=print) -> dict:
    """The figures of a run of `config` trained for no step: the held-out pairs' (the policy is the reference: every
    margin 0, loss ln 2) and the --questions figures of the base model itself. Written to summary.json in config.out."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, facts = make_trainer(config, data_root, log)
    heldout = heldout_figures(trainer.evaluate())
    summary = {**facts, "out": str(out), "steps": 0, "train_loss": None, "trainable_params": 0,
               "trainable_percent": 0.0, "heldout_before": heldout, "heldout_after": heldout,
               **answer_questions(trainer, config, data_root, log), "config": dataclasses.asdict(config)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def render_report(summary: dict, trainable: str) -> str:
    before, after, c = summary["heldout_before"], summary["heldout_after"], summary["config"]
    lora = LoraConfig(**c["lora"])
    rows = "\n".join(f"| {name.replace('_', ' ')} | {before.get(name, float('nan')):.4f} | "
                     f"{after.get(name, float('nan')):.4f} |" for name in HELDOUT_METRICS)
    lines = [
        "# DPO report", "",
        f"- base: `{summary['base']}`; pairs: `{summary['data']}`",
        f"- {summary['train_pairs']} pairs for training, {summary['heldout_pairs']} held out, "
        f"{summary['dropped_by_max_length']} dropped (prompt alone fills max_length {c['max_length']})",
        f"- {summary['steps']} steps in {summary['wall_seconds']} s; beta {c['beta']}, lr {c['lr']}, batch "
        f"{c['batch_size']} x {c['grad_accum']}, epochs {c['epochs']}, seed {c['seed']}",
        f"- LoRA rank {lora.rank}, alpha {lora.effective_alpha}, targets `{lora.target_modules}`: {trainable}",
        "- reference policy: the base with the adapter disabled (one copy of the weights in memory)", "",
        "## Held-out pairs", "",
        "A pair is ranked right when the chosen completion's implicit reward, beta * (log pi - log pi_ref), exceeds "
        "the rejected one's (a tie counts as wrong, so accuracy is 0 before training, when the policy is the "
        "reference); the margin is the mean difference of the two rewards.", "",
        "| figure | before | after |", "|---|---|---|", rows, "", *questions_lines(summary.get("questions")),
        "![margins and accuracy over steps](dpo.png)", "",
        f"Every logged figure is in `metrics.jsonl`. `talelab merge --adapter {summary['out']}/adapter --out <dir>` "
        "makes a standalone model of the adapter in `adapter/`.", ""]
    return "\n".join(lines)


def questions_lines(figures: dict | None) -> list[str]:
    """The report's question-set section (none without --questions)."""
    if not figures:
        return []
    return ["## Questions", "",
            f"{figures['count']} questions of `{figures['file']}` (template {figures['template']}), answered greedily "
            f"after training: BLEU {figures['bleu']:.2f} (sacrebleu corpus BLEU against the reference answers); "
            f"perplexity of the reference answers given the questions {figures['perplexity']:.2f} (their "
            f"{figures['scored_tokens']} completion tokens and EOS). Every answer is in `{figures['answers']}`.", ""]
