"""`talelab finetune`: supervised fine-tuning with trl's SFTTrainer, LoRA (peft) or full, resumable.

The output directory holds what `load_finetuned` (and talelab's loaders) read: the adapter or the full model with
its tokenizer; beside it checkpoints/, metrics.jsonl, loss.png, lr.png (the learning rate per step), summary.json,
the run log, and with --questions the model's answers (answers.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from talelab.atomic import write_text_atomic
from talelab.config import FinetuneConfig
from talelab.data.tags import has_dialogue, story_prompt
from talelab.errors import InputError
from talelab.finetune.base import (MetricsLog, checkpoint_step, context_length, format_trainable, load_base,
                                   lora_config, precision_flags, trainable_summary)
from talelab.finetune.formats import CHAT_TEMPLATES, bos_text, build_examples, words_used
from talelab.finetune.questions import complete, corpus_bleu, question_figures, reference_text
from talelab.plots import learning_rate_chart, loss_chart
from talelab.tracking import Tracker, open_tracker
from talelab.train.metrics import mean_perplexity, read_metrics, restart_metrics

CHECKPOINTS = "checkpoints"


def quiet_libraries(progress: bool) -> None:
    """datasets' per-stage bars only with --progress; transformers' advice on every step never."""
    if progress:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def split_examples(examples: list[dict], config: FinetuneConfig, tokenizer,
                   data_root=None) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, held out, test): a seeded shuffle of the examples cut into --eval-fraction (unless --eval-data gives
    the held-out examples), then --test-fraction, then the rest for training; each part in file order."""
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)

    def share(fraction: float) -> int:
        return max(1, round(len(examples) * fraction)) if fraction > 0 else 0

    eval_cut = 0 if config.eval_data else share(config.eval_fraction)
    test_cut = eval_cut + share(config.test_fraction)
    held_out, test, train = ([examples[i] for i in sorted(part)]
                             for part in (order[:eval_cut], order[eval_cut:test_cut], order[test_cut:]))
    if config.eval_data:  # a prepared directory: its validation split
        held_out, _ = build_examples(config.task, config.eval_data, tokenizer, config.template, config.derive_words,
                                     data_root, split="val", text_field=config.text_field)
    if config.max_examples:
        train = train[: config.max_examples]
    if not train:
        raise InputError(f"--data {config.data}: no training examples left after holding "
                         f"{len(held_out) + len(test)} out")
    return train, held_out, test


def trainer_rows(examples: list[dict]):
    """A datasets.Dataset of the fields trl reads (prompt/completion or text); measurement-only fields dropped."""
    keep = ("prompt", "completion", "text")
    return Dataset.from_list([{k: e[k] for k in keep if k in e} for e in examples])


def sft_arguments(config: FinetuneConfig, checkpoints: Path, has_eval: bool, precision: dict):
    return SFTConfig(
        output_dir=str(checkpoints), learning_rate=config.lr, warmup_steps=config.warmup_ratio,  # < 1: a ratio
        lr_scheduler_type="linear", weight_decay=config.weight_decay, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1, max_length=config.max_length,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval and config.eval_steps else "no", eval_steps=config.eval_steps or None,
        gradient_checkpointing=config.gradient_checkpointing, seed=config.seed, data_seed=config.seed,
        # --report-to's tracker gets metrics.jsonl's records from MetricsLog, not from transformers' integrations
        report_to=[], disable_tqdm=not config.progress, dataloader_num_workers=0, dataset_num_proc=None,
        **precision)


def make_callbacks(config: FinetuneConfig, metrics_path: Path, tracker: Tracker) -> list:
    """Log every metrics row to metrics.jsonl and the tracker as it comes (the log DPO keeps too), and stop at
    --stop-at-step after a checkpoint."""
    class StopAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if config.stop_at_step and state.global_step >= config.stop_at_step:
                control.should_save = True
                control.should_training_stop = True

    return [MetricsLog(metrics_path, tracker), StopAtStep()]


def tag_adherence(model, tokenizer, held_out: list[dict], samples: int, max_new_tokens: int, temperature: float,
                  seed: int = 0) -> dict:
    """Dialogue rate with and without Dialogue requested, and the share of required words each story uses."""
    bos = bos_text(tokenizer)
    result = {}
    for label, features in (("with_dialogue", ["Dialogue"]), ("without_features", [])):
        stories = complete(model, tokenizer, [story_prompt(features, bos=bos)] * samples, max_new_tokens,
                           temperature, seed)
        result[f"dialogue_rate_{label}"] = sum(map(has_dialogue, stories)) / samples
        result[f"example_{label}"] = stories[0]
    worded = [e for e in held_out if e.get("words")][:samples]
    if worded:
        prompts = [story_prompt(e["features"], e["words"], bos=bos) for e in worded]
        stories = complete(model, tokenizer, prompts, max_new_tokens, temperature, seed)
        per_story = [{"words": e["words"], "used": words_used(s, e["words"])} for e, s in zip(worded, stories)]
        result["required_words"] = per_story
        result["required_words_used"] = sum(p["used"] for p in per_story) / sum(len(p["words"]) for p in per_story)
    result["samples"] = samples
    return result


def answer_bleu(model, tokenizer, held_out: list[dict], samples: int, max_new_tokens: int) -> dict:
    """Corpus BLEU (sacrebleu) of greedy answers to held-out prompts against their reference answers."""
    rows = held_out[:samples]
    answers = complete(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)
    return {"bleu": corpus_bleu(answers, [reference_text(r) for r in rows]), "answers": len(rows),
            "example_answer": answers[0] if answers else ""}


@dataclass
class PreparedRun:
    """A fine-tuning run ready to train: the trainer, its tokenizer, the held-out and test examples and the log so
    far."""

    trainer: object
    tokenizer: object
    held_out: list[dict]
    test: list[dict]
    summary: dict
    note: Callable[[str], None]
    resume_from: str | None
    tracker: Tracker


def prepare_run(config: FinetuneConfig, data_root=None, log=print) -> PreparedRun:
    """Load the base, build the examples, wrap LoRA and set up trl's SFTTrainer (resuming if asked)."""
    out = Path(config.out)
    checkpoints = out / CHECKPOINTS
    precision = precision_flags(config.dtype)  # float16 without a GPU stops here, before anything loads
    resume_from = None
    if config.resume:
        found = sorted(checkpoints.glob("checkpoint-*"), key=checkpoint_step)
        if not found:
            raise InputError(f"--resume: no checkpoint in {checkpoints} (run without --resume first)")
        resume_from = str(found[-1])
    elif checkpoints.exists() and any(checkpoints.iterdir()):
        raise InputError(f"{checkpoints}: checkpoints of an earlier run are there (pass --resume to continue it, or "
                         f"choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        for stale in ("log.txt", "summary.json"):
            (out / stale).unlink(missing_ok=True)
    resumed_step = checkpoint_step(resume_from) if resume_from else None
    _, logged_through = restart_metrics(out / "metrics.jsonl", resumed_step)
    quiet_libraries(config.progress)

    def note(line: str) -> None:
        log(line)
        with (out / "log.txt").open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    torch.manual_seed(config.seed)  # the LoRA initialisation
    model, tokenizer = load_base(config.base, data_root, log=note)
    context = context_length(model)
    if context and config.max_length > context:  # GPT-2 has learned positions: no sequence may outgrow them
        note(f"max_length {config.max_length} -> {context}, the model's context")
        config = dataclasses.replace(config, max_length=context)
    examples, data_note = build_examples(config.task, config.data, tokenizer, config.template, config.derive_words,
                                         data_root, text_field=config.text_field)
    note(data_note)
    train, held_out, test = split_examples(examples, config, tokenizer, data_root)
    note(f"examples: {len(train)} for training, {len(held_out)} held out" + (f", {len(test)} for the test" if test
                                                                               else ""))
    peft_config = None
    if not config.full:
        peft_config = lora_config(model, config.lora)
    tracker = open_tracker(config.report_to, out, dataclasses.asdict(config), resumed_step, logged_through)
    trainer = SFTTrainer(model=model, args=sft_arguments(config, checkpoints, bool(held_out), precision),
                         train_dataset=trainer_rows(train), eval_dataset=trainer_rows(held_out) if held_out else None,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=make_callbacks(config, out / "metrics.jsonl", tracker))
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl; the log gets the lines that matter
    trainable, total, percent = trainable_summary(trainer.model)
    note(("full fine-tuning: " if config.full else f"LoRA r={peft_config.r} alpha={peft_config.lora_alpha} on "
          f"{', '.join(sorted(peft_config.target_modules))}: ") + format_trainable(trainer.model))
    summary = {"config": dataclasses.asdict(config), "trainable_params": trainable, "total_params": total,
               "trainable_percent": percent, "train_examples": len(train), "held_out_examples": len(held_out),
               "test_examples": len(test), "data_note": data_note,
               "template": train[0].get("template") if train else None}
    return PreparedRun(trainer, tokenizer, held_out, test, summary, note, resume_from, tracker)


def finetune(config: FinetuneConfig, data_root=None, log=print) -> dict:
    """Run `talelab finetune`; returns the summary also written to summary.json."""
    run = prepare_run(config, data_root, log)
    trainer, summary, note, out = run.trainer, run.summary, run.note, Path(config.out)
    try:  # the tracker stays open for the evaluations around training, which metrics.jsonl records too
        if run.held_out and run.resume_from is None:
            summary["eval_loss_before"] = held_out_figures(trainer, note, "before fine-tuning")["eval_loss"]
        started = time.time()
        result = trainer.train(resume_from_checkpoint=run.resume_from)
        summary.update(train_seconds=time.time() - started, steps=trainer.state.global_step,
                       train_loss=result.training_loss, final_loss=last_loss(trainer.state.log_history))
        if run.held_out:
            summary.update(held_out_figures(trainer, note, "after"))
    finally:
        run.tracker.close()
    records, title = read_metrics(out / "metrics.jsonl"), f"{config.task} fine-tuning of {Path(config.base).name}"
    loss_chart(records, out / "loss.png", "eval_loss", "held-out loss", title=title)
    learning_rate_chart(records, out / "lr.png", title=title)
    stopped_early = bool(config.stop_at_step) and trainer.state.global_step < trainer.state.max_steps
    if not stopped_early:
        trainer.save_model(str(out))  # adapter (or full model) + tokenizer
        summary.update(measure(trainer.model, run.tokenizer, config, run.held_out, note))
        summary.update(unseen_figures(run, config, data_root))
        if summary["template"] in CHAT_TEMPLATES and not run.tokenizer.chat_template:
            # set only now, after every example is built: an 'auto' template would read it as the tokenizer's own
            run.tokenizer.chat_template = CHAT_TEMPLATES[summary["template"]]
            run.tokenizer.save_pretrained(str(out))
    summary["stopped_at_step"] = trainer.state.global_step if stopped_early else None
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def evaluate_untrained(config: FinetuneConfig, data_root=None, log=print) -> dict:
    """The figures of a run of `config` trained for no step: held-out loss and perplexities, and what `measure`
    measures, of the model every run starts from (LoRA's B matrices start at zero: the base model itself). Summary
    written to summary.json in config.out."""
    run = prepare_run(config, data_root, log)
    if not run.held_out:
        raise InputError(f"--data {config.data}: no held-out examples to measure the base model on (set "
                         "--eval-fraction above 0 or give --eval-data)")
    summary = {**run.summary, "trainable_params": 0, "trainable_percent": 0.0, "steps": 0, "train_loss": None}
    try:
        summary.update(held_out_figures(run.trainer, run.note, "untrained"))
        summary.update(measure(run.trainer.model, run.tokenizer, config, run.held_out, run.note))
        summary.update(unseen_figures(run, config, data_root))
    finally:
        run.tracker.close()
    write_text_atomic(Path(config.out) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def unseen_figures(run: PreparedRun, config: FinetuneConfig, data_root=None) -> dict:
    """What the model makes of text it never trained on besides the held-out split: the test split's loss (measured
    as the held-out loss is, once), and the --questions figures (in the template the run trained with)."""
    figures = {}
    if run.test:
        loss = run.trainer.evaluate(eval_dataset=trainer_rows(run.test), metric_key_prefix="test")["test_loss"]
        figures.update(test_loss=loss, test_perplexity=math.exp(min(loss, 50.0)))
        run.note(f"test loss: {loss:.4f} (perplexity {figures['test_perplexity']:.2f}) on {len(run.test)} examples "
                 f"never trained or evaluated on")
    if config.questions:
        figures["questions"] = question_figures(run.trainer.model, run.tokenizer, config.questions,
                                                run.summary["template"] or config.template, config.max_new_tokens,
                                                config.max_length, Path(config.out), run.note, data_root)
    return figures


def held_out_figures(trainer, note, when: str) -> dict:
    """Held-out loss in nats per scored token over the whole held-out set, its perplexity, and the mean per-example
    perplexity; noted. transformers' eval_loss averages the batches' mean losses, so it moves with the evaluation
    batch size and with how examples fall into batches (trials at different batch sizes would not compare); every
    token weighs the same here, however the batches fall."""
    nll, tokens = held_out_nll(trainer)
    loss = sum(nll) / max(sum(tokens), 1)
    figures = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)),
               "mean_example_perplexity": mean_perplexity(nll, tokens)}
    trainer.log({"eval_loss": loss})  # the point at this step of the held-out curve (metrics.jsonl, trackers)
    note(f"held-out loss {when}: {loss:.4f} (perplexity {figures['perplexity']:.2f}; mean per-example perplexity "
         f"{figures['mean_example_perplexity']:.2f})")
    return figures


@torch.no_grad()
def held_out_nll(trainer) -> tuple[list[float], list[int]]:
    """Each held-out example's summed NLL and scored tokens, from the batches trainer.evaluate reads (the same
    tokens, prompts masked the same way, in the precision it computes in). Each batch's logits are held whole, as
    transformers' models return them."""
    model = trainer.model
    was_training = model.training
    model.eval()
    nll, tokens = [], []
    for batch in trainer.get_eval_dataloader():
        labels = batch.pop("labels").to(model.device)
        inputs = {k: v.to(model.device) for k, v in batch.items() if torch.is_tensor(v)}
        with trainer.compute_loss_context_manager():
            logits = model(**inputs).logits[:, :-1].float()
        targets = labels[:, 1:]  # position t predicts token t + 1
        nll += F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(1).tolist()
        tokens += (targets != -100).sum(1).tolist()
    model.train(was_training)
    return nll, tokens


def last_loss(history: list[dict]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else None


def measure(model, tokenizer, config: FinetuneConfig, held_out: list[dict], note) -> dict:
    """What the fine-tune was for: tag and word adherence of generated stories, or BLEU of held-out answers."""
    if not config.samples or not held_out and config.task != "stories-tags":
        return {}
    if config.task == "stories-tags":
        adherence = tag_adherence(model, tokenizer, held_out, config.samples, config.max_new_tokens,
                                  config.temperature, config.seed)
        line = (f"dialogue in generated stories: {adherence['dialogue_rate_with_dialogue']:.0%} with Dialogue "
                f"requested, {adherence['dialogue_rate_without_features']:.0%} without ({config.samples} each)")
        if "required_words_used" in adherence:
            line += f"; required words used: {adherence['required_words_used']:.0%}"
        note(line)
        return {"adherence": adherence}
    if config.task == "instruct":
        bleu = answer_bleu(model, tokenizer, held_out, config.samples, config.max_new_tokens)
        note(f"BLEU of {bleu['answers']} held-out answers (greedy): {bleu['bleu']:.2f}")
        return bleu
    return {}
