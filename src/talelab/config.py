"""Every stage's configuration as a dataclass (talelab.settings says how they are declared and layered; the named
presets are in talelab.presets, the commands' own settings in talelab.commands).

A field's `help` metadata becomes its `--help` text; `choices` restricts its values.
"""

from __future__ import annotations

from dataclasses import dataclass

from talelab.errors import ConfigError
from talelab.presets import PRESETS
from talelab.settings import Layer, Settings, option, overrides, preset_layer, require, resolve, section
from talelab.tracking import require_package

# One vocabulary of devices and precisions for every command (talelab.devices says what auto means); each field
# takes the subset that makes sense for it, spelled the same way.
DEVICES = ("auto", "cpu", "cuda")
TRAINING_DTYPES = ("auto", "float32", "bfloat16", "float16")
DECODING_DTYPES = ("auto", "float32", "bfloat16", "int8")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
# Where a run's metrics go besides metrics.jsonl (talelab.tracking); train, sweep, finetune, trials and dpo share it
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO_HELP = ("also send every metrics.jsonl record and the resolved config to an experiment tracker: "
                  "tensorboard (event files in OUT/tensorboard), wandb, mlflow or trackio (each needs its package)")


@dataclass
class PrepareConfig(Settings):
    source: str = option("data/tinystories/train-head.txt", "corpus: a file path (absolute, relative, or under the "
                         "data root), or a Hugging Face dataset id such as roneneldan/TinyStories; several "
                         "separated by commas are read in turn")
    out: str = option("runs/prepared", "output directory for train/val/test.jsonl and the cleaning report")
    format: str = option("auto", "how to read a file: auto (by suffix and content), eot (<|endoftext|> lines), "
                         "blank-line, lines (a line break ends a document, blank lines are paragraphs), jsonl, "
                         "json (one array of objects, e.g. TinyStories' all_data files) or parquet; gzip of any is "
                         "read as it is; one per source, comma-separated, when they differ")
    text_field: str = option("text", "field holding the text in JSONL, JSON, parquet or dataset records (e.g. story "
                             "for TinyStories' all_data); the other fields are kept in the splits")
    hub_split: str = option("train", "split to read when the source is a Hugging Face dataset id")
    hub_config: str = option("", "configuration (subset) name of a Hugging Face dataset")
    data_files: str = option("", "data files of a Hugging Face dataset to read, ';'-separated (e.g. "
                             "TinyStoriesV2-GPT4-train.txt)")
    max_documents: int = option(0, "read at most this many documents (0: all)")
    require_field: str = option("", "keep only records where this field (dotted for nested ones, e.g. "
                                "instruction.features) is present and not empty")
    tag_field: str = option("instruction.features", "field (dotted) holding a record's feature tags, as TinyStories' "
                            "all_data records hold them: the report counts the kept stories per feature and split "
                            "when records carry it")
    tag_rules: bool = option(False, "label each record that has no --tag-field by talelab's rule detector, before "
                             "--require-field and --sample see it. Only the rule features (Dialogue, MoralValue) are "
                             "labelled; BadEnding, Twist, Foreshadowing and Conflict never are. A record that "
                             "carries the field keeps its labels")
    sample: int = option(0, "keep a random sample of this many of the documents read (0: all); reads the source "
                         "twice, first to count")
    seed: int = option(0, "seed of --sample")
    workers: int = option(0, "worker processes that clean and hash documents (0: one per core)")
    stats_tokenizer: str = option("", "a tokenizer whose tokens and distinct tokens the report's statistics count")
    recase: bool = option(False, "restore capitals in all-lowercase documents from the word casing of the cased "
                          "ones (e.g. --source data/tinystories/train-head.txt,data/tinystories/"
                          "train-head-lowercase.txt --format eot,lines: 2.3x the stories; the copies of cased "
                          "stories go as duplicates)")
    min_chars: int = option(50, "drop documents shorter than this after cleaning")
    max_chars: int = option(20000, "drop documents longer than this after cleaning")
    max_non_ascii: float = option(0.02, "drop documents whose share of non-ASCII characters exceeds this")
    min_quality: float = option(0.0, "drop documents whose quality score (talelab.data.quality, 0-1) is below this; "
                                "0 keeps all; 99 in 100 of train-head.txt's stories score above 0.81")
    near_duplicate_threshold: float = option(0.85, "Jaccard similarity (MinHash LSH, word 5-grams) above which a "
                                             "document is a near duplicate of an earlier one; 0 disables")
    val_fraction: float = option(0.02, "share of documents for validation (deterministic by content hash)")
    test_fraction: float = option(0.02, "share of documents for test (deterministic by content hash)")

    def check(self):
        fractions = (self.val_fraction, self.test_fraction)
        if not (all(0 <= f < 1 for f in fractions) and sum(fractions) < 1):
            raise ConfigError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction}: each must be in "
                              "[0, 1) and together below 1, leaving documents for training")
        require("prepare", [
            (0 <= self.near_duplicate_threshold <= 1,
             f"near_duplicate_threshold {self.near_duplicate_threshold}: must be in [0, 1] (0 disables)"),
            (0 <= self.min_chars <= self.max_chars,
             f"min_chars {self.min_chars}, max_chars {self.max_chars}: need 0 <= min <= max"),
            (0 <= self.max_non_ascii <= 1, f"max_non_ascii {self.max_non_ascii}: must be a share in [0, 1]"),
            (0 <= self.min_quality <= 1,
             f"min_quality {self.min_quality}: must be a quality score in [0, 1] (0 disables)"),
            (bool(self.tag_field) or not self.tag_rules, "tag_rules needs a tag_field to write the labels into"),
            *[(getattr(self, name) >= 0, f"{name} {getattr(self, name)}: must be >= 0 (0 reads all)")
              for name in ("max_documents", "sample", "workers")]])


@dataclass
class TokenizerConfig(Settings):
    data: str = option("runs/prepared", "prepared directory (train.jsonl) or a text/JSONL file to train on")
    out: str = option("runs/tokenizer", "output directory for tokenizer.json + tokenizer_config.json")
    kind: str = option("bpe", "byte-level BPE or word-level (most frequent words + <unk>)", ("bpe", "words"))
    vocab_size: int = option(2048, "vocabulary size including special tokens")
    lowercase: bool = option(False, "lowercase text before a word-level tokenizer sees it")
    min_frequency: int = option(2, "ignore merges / words seen fewer times than this")
    sample_chars: int = option(200_000_000, "train on the first this many characters of the corpus (0: all); the "
                               "trainer runs at about 7 MB/s on 2 cores, and a few thousand tokens or words are "
                               "settled long before 200 MB of stories")


@dataclass
class ModelConfig(Settings):
    family: str = option("transformer", "model family: a decoder-only transformer, the pair-compressing transformer "
                         "(compressor), or a recurrent baseline (tanh RNN, LSTM, GRU)",
                         ("transformer", "compressor", "rnn", "lstm", "gru"))
    vocab_size: int = option(0, "vocabulary size; 0 takes the tokenizer's")
    d_model: int = option(128, "width of the residual stream (recurrent models: the embedding size)")
    hidden_size: int = option(0, "recurrent models: hidden state size; 0 means d_model")
    n_layers: int = option(4, "number of transformer blocks")
    n_heads: int = option(4, "attention heads (query heads)")
    n_kv_heads: int = option(0, "key/value heads for grouped-query attention; 0 means n_heads")
    d_ff: int = option(0, "feed-forward width; 0 means 4*d_model (2/3 of that, rounded up to 32, for swiglu)")
    context_length: int = option(256, "longest sequence the model reads")
    positions: str = option("rope", "position encoding", ("rope", "sinusoidal", "learned"))
    norm: str = option("rmsnorm", "normalisation layer", ("rmsnorm", "layernorm"))
    norm_position: str = option("pre", "normalise before each sublayer (pre) or after the residual add (post)",
                                ("pre", "post"))
    activation: str = option("swiglu", "feed-forward activation", ("swiglu", "gelu", "relu"))
    dropout: float = option(0.0, "dropout on attention weights and residual branches")
    attention_dropout: float = option(-1.0, "dropout on attention weights alone; -1 takes `dropout`. 0 keeps the "
                                      "fused attention kernel on CPU, which has no dropout: residual dropout then "
                                      "costs ~15 % of CPU throughput instead of half")
    tie_embeddings: bool = option(True, "share the input embedding with the output projection")
    bias: bool = option(False, "biases in linear and norm layers")
    norm_eps: float = option(1e-5, "epsilon of the normalisation layers")
    rope_theta: float = option(10000.0, "RoPE base frequency")

    def check(self):
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
            if self.activation == "swiglu":  # keep the parameter count of a 4x MLP, as Llama does
                self.d_ff = -(-(2 * self.d_ff // 3) // 32) * 32
        if self.hidden_size == 0:
            self.hidden_size = self.d_model
        recurrent = self.family in ("rnn", "lstm", "gru")
        checks = [
            (recurrent or self.d_model % self.n_heads == 0,
             f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}"),
            (recurrent or self.n_heads % self.n_kv_heads == 0,
             f"n_heads {self.n_heads} must be divisible by n_kv_heads {self.n_kv_heads}"),
            (recurrent or self.positions != "rope" or (self.d_model // self.n_heads) % 2 == 0,
             "rope needs an even head size"),
            (self.context_length > 0 and self.n_layers > 0, "context_length and n_layers must be positive"),
            (not (recurrent and self.tie_embeddings) or self.hidden_size == self.d_model,
             f"tie_embeddings needs hidden_size == d_model ({self.hidden_size} != {self.d_model})"),
        ]
        require("model config", checks)

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class SamplingConfig(Settings):
    prompt: str = option("Once upon a time", "text the story starts with (after the beginning-of-story token)")
    max_new_tokens: int = option(256, "most tokens to generate (fewer when the context is full or the story ends)")
    temperature: float = option(0.8, "softmax temperature; 0 means greedy decoding")
    top_k: int = option(0, "sample only among the k most likely tokens; 0 disables")
    top_p: float = option(1.0, "sample only from the smallest set of tokens whose probability reaches p; 1 disables")
    repetition_penalty: float = option(1.0, "divide positive / multiply negative logits of tokens already present "
                                       "(CTRL); 1 disables")
    num_beams: int = option(1, "beam search with this many beams; 1 disables")
    beam_sample: bool = option(False, "with num_beams > 1: sample the beam candidates instead of taking the best")
    length_penalty: float = option(1.0, "beam scores are divided by length**length_penalty")
    num_samples: int = option(1, "number of stories to generate")
    seed: int = option(-1, "random seed for sampling; -1 draws a fresh one")
    stop_at_eos: bool = option(True, "stop a story at the end-of-story token")

    def check(self):
        require("sampling config", [
            (self.max_new_tokens >= 0, f"max_new_tokens={self.max_new_tokens} must be 0 or more"),
            (self.temperature >= 0, f"temperature={self.temperature} must be 0 (greedy) or more"),
            (self.top_k >= 0, f"top_k={self.top_k} must be 0 (off) or more"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]"),
            (self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} must be positive"),
            (self.num_beams >= 1, f"num_beams={self.num_beams} must be 1 or more"),
            (self.num_samples >= 1, f"num_samples={self.num_samples} must be 1 or more"),
            (self.num_beams == 1 or self.num_samples <= self.num_beams,
             f"num_samples={self.num_samples} exceeds num_beams={self.num_beams}: beam search returns at most "
             f"num_beams stories; raise num_beams or lower num_samples")])


@dataclass
class TrainConfig(Settings):
    data: str = option("runs/prepared", "prepared data directory (from `talelab prepare`)")
    tokenizer: str = option("runs/tokenizer", "tokenizer directory (from `talelab tokenizer train`) or file")
    out: str = option("runs/train", "run directory: checkpoints, metrics.jsonl, metrics.csv, loss.png")
    max_steps: int = option(1000, "optimizer steps to train")
    epochs: float = option(0.0, "budget in passes over the training split, overriding max_steps when above 0: "
                           "steps = ceil(epochs x train tokens / (batch_size x grad_accum x context_length)). "
                           "Batches are windows at random offsets, so one epoch draws as many tokens as the split "
                           "holds, not every token exactly once")
    max_tokens: int = option(0, "budget in training tokens, overriding max_steps when above 0: the whole steps of "
                             "batch_size x grad_accum x context_length tokens it pays for. Unlike a time budget it "
                             "gives the same model on a fast machine and a slow one")
    schedule_steps: int = option(0, "steps the learning-rate schedule spans (0: max_steps); set it to stop early "
                                 "and continue later with --resume on the same schedule")
    max_minutes: float = option(0.0, "stop after this much training time; the schedule then runs on time, not steps "
                                "(0: no limit)")
    batch_size: int = option(32, "sequences per micro-batch, over all processes (torchrun splits it evenly)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a share of the peak (cosine and wsd)")
    warmup_steps: int = option(100, "linear warmup steps")
    schedule: str = option("cosine", "learning-rate schedule after warmup", ("cosine", "wsd", "step", "constant"))
    decay_fraction: float = option(0.2, "wsd: share of training spent decaying at the end")
    step_size: int = option(5000, "step schedule: multiply the rate by gamma every step_size steps (StepLR)")
    gamma: float = option(0.8, "step schedule: decay factor")
    objective: str = option("next-token", "training objective; contrastive adds alpha / (L_shuffled + 0.01) for "
                            "stories with shuffled sentences", ("next-token", "contrastive"))
    contrastive_fraction: float = option(0.33, "contrastive: share of each batch made of sentence-shuffled stories")
    contrastive_alpha: float = option(5.0, "contrastive: weight alpha of the shuffled-story term")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not on norms, biases or embeddings)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    optimizer: str = option("adamw", "adamw for every weight; muon: Muon (torch.optim.Muon: momentum orthogonalised "
                            "by Newton-Schulz) for the hidden matrices, AdamW at --lr for embeddings, output layer, "
                            "norms and biases", ("adamw", "muon"))
    muon_lr: float = option(0.02, "Muon's peak learning rate (its updates are orthogonal matrices, so it lives on "
                            "another scale than AdamW's); the schedule shapes it as it shapes --lr")
    muon_momentum: float = option(0.95, "Muon's momentum (Nesterov)")
    muon_weight_decay: float = option(0.0, "Muon's decoupled weight decay (multiplied by its learning rate)")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0 disables")
    log_interval: int = option(10, "record the training loss every this many steps")
    eval_interval: int = option(200, "evaluate every this many steps (and at the end)")
    eval_batches: int = option(8, "validation batches per evaluation")
    checkpoint_interval: int = option(200, "write a checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    dtype: str = option("auto", "compute precision: autocast to bfloat16 (CPU/CUDA) or float16 with a grad scaler "
                        "(CUDA); auto: bfloat16 on CUDA, float32 on CPU", TRAINING_DTYPES)
    compile: bool = option(False, "torch.compile each transformer block (one graph for all of them: a cold start "
                           "compiles one block, about 20-35 s on 2 CPU cores); recurrent models whole")
    fsdp: bool = option(False, "under torchrun: shard weights, gradients and optimizer state across processes "
                        "with FSDP2 (fully_shard per block) instead of replicating them (DDP)")
    device: str = option("auto", "cuda when present, else cpu", DEVICES)
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    seed: int = option(1337, "seed for initialisation, data order and dropout")
    progress: bool = option(True, "show a progress bar")
    report_to: str = option("none", REPORT_TO_HELP, TRACKERS)

    def check(self):
        require("training", [(self.epochs >= 0, f"epochs: {self.epochs} is negative (0 lets max_steps decide)"),
                             (self.max_tokens >= 0, f"max_tokens: {self.max_tokens} is negative (0 lets max_steps "
                                                    f"decide)"),
                             (not (self.epochs and self.max_tokens), "give epochs or max_tokens, not both: each "
                                                                     "sets the number of steps"),
                             (not (self.optimizer == "muon" and self.fsdp), "optimizer muon: Newton-Schulz needs "
                                                                            "whole matrices, not FSDP's shards "
                                                                            "(drop --fsdp, or use adamw)")])
        require_package(self.report_to)


@dataclass
class TrainRun(Settings):
    """`talelab train`: the model and how to train it (YAML sections `model:` and `train:`)."""

    model: ModelConfig = section(ModelConfig, "model")
    train: TrainConfig = section(TrainConfig, "training")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", saved=False)


def build_train_configs(preset_name: str | None = None, overrides: dict[str, dict] | None = None,
                        base: Layer | None = None) -> tuple[ModelConfig, TrainConfig]:
    """`base` (e.g. a saved run), then a preset, then `overrides` ({'model': ..., 'train': ...}), later winning."""
    layers = [base] if base else []
    if preset_name:
        layers.append(preset_layer(PRESETS, preset_name))
    if overrides:
        layers.append(("overrides", overrides))
    run = resolve(TrainRun, layers, "train")
    return run.model, run.train


@dataclass
class DecodeConfig(Settings):
    """How a trained model runs while it writes or is scored: generate, eval and serve share it."""

    device: str = option("auto", "cuda when present, else cpu", DEVICES)
    dtype: str = option("auto", "weights while decoding: bfloat16 halves the memory read per token (logits within "
                        "~1e-2); int8 (CPU, weight-only) quarters it for the linear layers (logits within ~1 % of "
                        "their range); auto: bfloat16 on CUDA, float32 on CPU", DECODING_DTYPES)
    compile: bool = option(False, "compile the decoding step (TorchInductor, frozen weights): faster per token "
                           "after a 20-60 s first call")


@dataclass
class ServeConfig(Settings):
    host: str = option("127.0.0.1", "address to bind; the default answers this machine only, 0.0.0.0 answers anyone")
    port: int = option(8000, "TCP port")
    max_prompt_chars: int = option(8000, "longest prompt accepted, in characters (the model's context caps tokens)")
    max_tokens: int = option(512, "largest max_tokens a request may ask for")
    default_max_tokens: int = option(256, "max_tokens of a request that does not say")
    max_choices: int = option(4, "largest n (stories per request)")
    max_concurrent: int = option(64, "stories being written or waiting, all models together; requests beyond "
                                "get 429")
    batching: bool = option(True, "run requests that arrive together in shared forward passes (off: one at a time)")
    max_batch: int = option(16, "most rows in one batch")
    batch_window_ms: float = option(10.0, "how long a batch waits for more requests after the first arrives")


QUESTIONS_HELP = ("a fixed question set, JSONL of {\"prompt\", \"answer\"} rows as instruct data are read (e.g. "
                  "data/instruct/dolly-subset.jsonl: prompts already in the Alpaca form are kept as they are): the "
                  "trained model answers each greedily; summary.json gets the corpus BLEU (sacrebleu, 0-100) of the "
                  "answers against the reference answers and the perplexity of the reference answers given the "
                  "questions (their completion tokens and EOS, as training scores an answer); answers.jsonl holds "
                  "every answer (empty: none)")


@dataclass
class LoraConfig(Settings):
    """A LoRA adapter's shape, the same for finetune, dpo and trials."""

    rank: int = option(8, "LoRA rank")
    alpha: float = option(0.0, "LoRA alpha (scaling alpha / rank); 0 means 2 x rank")
    dropout: float = option(0.05, "dropout on the LoRA path")
    target_modules: str = option("auto", "modules LoRA adapts: 'auto' (the architecture's preset), a preset name "
                                 "(llama, gpt2) or names separated by commas")

    def check(self):
        require("lora", [(self.rank >= 1, f"rank={self.rank} must be 1 or more"),
                         (self.alpha >= 0, f"alpha={self.alpha} must be 0 (2 x rank) or more"),
                         (0 <= self.dropout < 1, f"dropout={self.dropout} must be in [0, 1)")])

    @property
    def effective_alpha(self) -> float:
        """alpha as peft gets it; 0 stays 0 in saved configs so that a trial's other rank doubles it too."""
        return self.alpha or 2.0 * self.rank


@dataclass
class PreferenceConfig(Settings):
    """`talelab dpo`: LoRA DPO (trl) on preference pairs; the reference is the base with the adapter disabled."""

    base: str = option("", "model to align (usually an SFT model): Hugging Face directory or hub id, talelab model "
                       "or run directory, or a merged model", required=True)
    data: str = option("", "preference pairs: JSONL (.gz too) with prompt/chosen/rejected, or Anthropic HH rows "
                       "whose chosen/rejected dialogues share a prompt up to the last '\\n\\nAssistant:'",
                       required=True)
    prompt_field: str = option("prompt", "field of a pair's prompt, e.g. instruction (UltraFeedback); a row without "
                               "it whose chosen/rejected are Anthropic HH dialogues gets its prompt split off")
    chosen_field: str = option("chosen", "field of the preferred response, e.g. chosen_response")
    rejected_field: str = option("rejected", "field of the other response, e.g. rejected_response")
    out: str = option("runs/dpo", "output: adapter/, checkpoints/, metrics.jsonl, dpo.png, report.md, summary.json "
                      "(and answers.jsonl with --questions)")
    beta: float = option(0.1, "DPO temperature: how far the policy may move from the reference")
    lr: float = option(5e-5, "peak learning rate (linear decay after warmup)")
    warmup_ratio: float = option(0.1, "share of the steps spent warming the learning rate up")
    epochs: float = option(1.0, "passes over the training pairs")
    batch_size: int = option(8, "pairs per optimizer step (before gradient accumulation)")
    grad_accum: int = option(1, "gradient accumulation steps")
    max_length: int = option(512, "longest prompt + completion in tokens (the prompt's start is kept)")
    max_pairs: int = option(0, "use at most this many pairs of the file, in file order (0: all)")
    heldout_fraction: float = option(0.1, "share of the pairs held out to measure reward accuracy and margins")
    lora: LoraConfig = section(LoraConfig, "LoRA", prefix="lora_", dropout=0.0)
    eval_steps: int = option(0, "evaluate on the held-out pairs every this many steps (0: about 10 times a run)")
    save_steps: int = option(50, "write a resumable checkpoint every this many steps")
    logging_steps: int = option(1, "log training metrics every this many steps")
    report_to: str = option("none", REPORT_TO_HELP, TRACKERS)
    dtype: str = option("float32", "weights and compute precision; float16 (GPU only): float16 weights, float32 "
                        "LoRA weights, mixed-precision steps with loss scaling (trl fp16=True)", WEIGHT_DTYPES)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory, slower)")
    seed: int = option(42, "seed for the held-out split, LoRA initialisation and data order")
    questions: str = option("", QUESTIONS_HELP)
    max_new_tokens: int = option(200, "most tokens per generated answer to --questions")
    progress: bool = option(True, "show a progress bar")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", saved=False)

    def check(self):
        require("dpo", [
            (self.beta > 0, f"beta={self.beta} must be positive"),
            (self.lr > 0, f"lr={self.lr} must be positive"),
            (self.epochs > 0, f"epochs={self.epochs} must be positive"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be 1 or more"),
            (self.max_length >= 8, f"max_length={self.max_length} must be 8 tokens or more"),
            (0 < self.heldout_fraction < 1, f"heldout_fraction={self.heldout_fraction} must be in (0, 1)"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio} must be in [0, 1)"),
            (self.save_steps >= 1 and self.logging_steps >= 1, "save_steps and logging_steps must be >= 1"),
            (self.eval_steps >= 0 and self.max_pairs >= 0, "eval_steps and max_pairs must be 0 or more"),
            (len({self.prompt_field, self.chosen_field, self.rejected_field}) == 3,
             "prompt_field, chosen_field and rejected_field must name three different fields")])
        require_package(self.report_to)


@dataclass
class PrefsConfig(Settings):
    """`talelab prefs build`: story preference pairs from a corpus (prompt = a story's beginning)."""

    data: str = option("runs/prepared", "stories: a prepared directory, a text file or a JSONL file (path or under "
                       "the data root)")
    out: str = option("runs/prefs/pairs.jsonl", "JSONL of {prompt, chosen, rejected}")
    rejected: str = option("shuffle", "the rejected side: the real continuation with its sentences shuffled, or the "
                           "model's own sample", ("shuffle", "sample"))
    model: str = option("", "with rejected=sample: a talelab model or run directory, a Hugging Face directory or "
                        "hub id, or a LoRA adapter directory")
    prompt_fraction: float = option(0.4, "share of a story's sentences that form the prompt")
    min_continuation_sentences: int = option(2, "skip stories with fewer sentences than this after the prompt")
    max_pairs: int = option(0, "make at most this many pairs, reading the stories only until then (0: one per usable "
                            "story)")
    split: str = option("train", "which file of a prepared directory to read", ("train", "val", "test"))
    text_field: str = option("text", "field holding the story in JSONL rows")
    temperature: float = option(1.0, "with rejected=sample: sampling temperature (0: greedy)")
    top_p: float = option(0.95, "with rejected=sample: nucleus sampling threshold")
    max_new_tokens: int = option(0, "with rejected=sample: tokens to sample (0: the real continuation's length + 8)")
    batch_size: int = option(16, "with rejected=sample: stories sampled together")
    seed: int = option(1337, "seed of the shuffles and samples (story i uses seed + i)")
    progress: bool = option(True, "show a progress bar while sampling")

    def check(self):
        require("prefs", [
            (0 < self.prompt_fraction < 1,
             f"prompt_fraction={self.prompt_fraction} must be between 0 and 1 (exclusive)"),
            (self.min_continuation_sentences >= 1,
             f"min_continuation_sentences={self.min_continuation_sentences} must be 1 or more"),
            (self.rejected != "shuffle" or self.min_continuation_sentences >= 2,
             "rejected=shuffle needs min_continuation_sentences >= 2 (one sentence cannot be shuffled)"),
            (self.rejected != "sample" or self.model,
             "rejected=sample needs --model (the model whose own continuations become the rejected side)"),
            (self.batch_size >= 1 and self.max_new_tokens >= 0 and self.max_pairs >= 0,
             "batch_size must be 1 or more; max_new_tokens and max_pairs 0 (automatic/all) or more")])


@dataclass
class JudgeConfig(Settings):
    """An LLM judge over an OpenAI-compatible chat endpoint: 1-10 per rubric category, strict JSON, mean +- CI."""

    base_url: str = option("https://api.openai.com/v1", "OpenAI-compatible endpoint (…/v1), e.g. "
                           "http://127.0.0.1:8000/v1 for `talelab serve` or a vLLM / Ollama server")
    model: str = option("gpt-4o-mini", "judge model name as the endpoint knows it")
    api_key_env: str = option("OPENAI_API_KEY", "NAME of the environment variable holding the API key (the key "
                              "itself never goes on the command line); unset: a placeholder key is sent, which "
                              "local servers ignore")
    samples: int = option(3, "judgements per story (averaged; the judge samples at `temperature`)")
    temperature: float = option(0.7, "sampling temperature of the judge")
    max_tokens: int = option(200, "longest judge reply, in tokens")
    rubric: str = option("", "YAML/JSON file with 'categories': {name: description} (default: the bundled "
                         "grammar, spelling, consistency, plot, creativity, style)")
    anchors: str = option("", "YAML/JSON file of few-shot examples [{story, scores}] (default: the bundled three; "
                          "'none': no examples)")
    retries: int = option(3, "further attempts after an invalid reply or a failed request")
    timeout: float = option(60.0, "seconds to wait for one reply")
    workers: int = option(4, "requests in flight at once")
    json_mode: bool = option(True, "ask the endpoint for a JSON object (response_format); turn off for endpoints "
                             "that reject it")
    human_ratings: str = option("", "JSONL {\"story\", \"scores\": {category: score}} or CSV (story column + one "
                                "column per category): the judge also grades these, and the report gives its "
                                "Spearman correlation with them per category")


EVAL_SUITES = ("likelihood", "completion", "diversity", "memorization", "quality", "tags", "probes", "judge")


@dataclass
class EvalConfig(Settings):
    """`talelab eval MODEL`: which suites run on what, how stories are generated, and where the report goes."""

    model: str = option("", "talelab model or run directory, Hugging Face model directory or PEFT adapter directory",
                        required=True, positional="?")
    suite: str = option("default", "comma-separated suites: " + ", ".join(EVAL_SUITES) + "; 'default' is all but "
                        "judge (it needs --judge-base-url), 'all' is every one")
    out: str = option("", "report directory for report.md, report.json and the charts, replaced on each run "
                      "(empty: runs/eval/<model directory name>)")
    text: str = option("data/tinystories/valid-head.txt", "likelihood: validation text (path or under the data root)")
    protocol: str = option("reference", "likelihood: reference (blank-line pieces 2..301, shared/README.md) or "
                           "documents (every document of --text)", ("reference", "documents"))
    data: str = option("data/tinystories/valid-head.txt", "completion: held-out stories: a prepared directory (its "
                       "val.jsonl), a text or JSONL file")
    stories: int = option(32, "completion: held-out texts to complete")
    min_words: int = option(40, "completion: use only held-out texts of at least this many words")
    fraction: float = option(0.4, "completion: share of each held-out text given to the model")
    cut: str = option("words", "completion: measure that share in words or in sentences", ("words", "sentences"))
    completion_sample: str = option("first", "completion: the first --stories held-out texts, or --stories drawn at "
                                    "random from all of them (reservoir sampling over one pass, seeded by --seed)",
                                    ("first", "random"))
    samples: int = option(32, "stories generated from --prompt for diversity, memorization, quality, judge and "
                          "each sweep setting")
    train_data: str = option("data/tinystories/train-head.txt", "memorization: training stories (a prepared "
                             "directory's train.jsonl, a text or JSONL file); quality: its first 200 are the reference")
    rouge_search: str = option("candidates", "memorization: max ROUGE-2 precision over the 10 TF-IDF nearest "
                               "training stories (candidates), or exactly over every training story (all: one more "
                               "pass over --train-data on every core)", ("candidates", "all"))
    batch_size: int = option(16, "stories generated together, and documents scored together")
    sweep: str = option("", "decoding settings to compare (empty: no sweep), e.g. 'temperature=0.6,0.8,1.2' or "
                        "'temperature=0.7,1 top_p=0.9,1' (a grid); keys: temperature, top_k, top_p, num_beams, "
                        "repetition_penalty")
    stories_per_feature: int = option(10, "tags: stories generated per requested feature")
    classifier: str = option("", "tags: a classifier from `talelab tags train` for the non-rule features (empty: "
                             "rules only)")
    probe_sets: str = option("", "probes: comma-separated bundled prompt sets (empty: all)")
    progress: bool = option(True, "show progress bars")
    # story i of a section is drawn with seed + i, so a report is reproducible
    sampling: SamplingConfig = section(SamplingConfig, "sampling (every generating suite; --prompt begins the "
                                       "--samples stories)", max_new_tokens=200, seed=1234,
                                       skip=("num_samples", "beam_sample", "length_penalty", "stop_at_eos"))
    decode: DecodeConfig = section(DecodeConfig, "decoding (the model under evaluation)")
    judge: JudgeConfig = section(JudgeConfig, "judge (suite 'judge')", prefix="judge_")

    def check(self):
        require("eval", [(getattr(self, name) >= 1, f"--{name.replace('_', '-')} {getattr(self, name)}: must be at "
                          "least 1") for name in ("stories", "samples", "batch_size", "min_words")]
                + [(self.sampling.max_new_tokens >= 1,
                    f"--max-new-tokens {self.sampling.max_new_tokens}: must be at least 1")])


@dataclass
class FinetuneConfig(Settings):
    """`talelab finetune`: LoRA (or full) SFT with trl on stories with tags, plain text, or instructions."""

    base: str = option("", "model to fine-tune: Hugging Face directory or hub id, or a talelab model or run directory "
                       "(exported to a Hugging Face directory beside it first)", required=True)
    task: str = option("stories-tags", "stories with requested features (loss on the story), plain text (domain-"
                       "adaptive pretraining), or instructions (loss on the answers)",
                       ("stories-tags", "lm", "instruct"))
    data: str = option("data/tinystories/train-head.txt", "training data (path or under the data root): a prepared "
                       "directory (its train.jsonl), a text or JSONL file, or (stories-tags) TinyStories all_data JSON")
    text_field: str = option("text", "lm: the field holding each document in JSONL, JSON or parquet rows (e.g. Poem)")
    out: str = option("runs/finetune", "output: adapter (or model) + tokenizer, checkpoints/, metrics.jsonl, loss.png, "
                      "lr.png, summary.json, log.txt (and answers.jsonl with --questions)")
    eval_data: str = option("", "held-out file; empty: hold --eval-fraction of --data out")
    eval_fraction: float = option(0.05, "share of --data held out when there is no --eval-data")
    test_fraction: float = option(0.0, "share of --data held out as a test split (seeded, like --eval-fraction), "
                                  "never seen in training or evaluation until its loss is measured once at the end "
                                  "(0: none); e.g. --eval-fraction 0.05 --test-fraction 0.15 for an 80/5/15 split")
    max_examples: int = option(0, "use at most this many training examples after the split (0: all)")
    template: str = option("auto", "instruct: prompt template ('auto': chat for 'messages' rows when the tokenizer has "
                           "a chat template, else alpaca)", ("auto", "alpaca", "user-assistant", "chat"))
    derive_words: int = option(0, "stories-tags: required words drawn from each unlabelled story for its prompt")
    full: bool = option(False, "full fine-tuning instead of LoRA")
    lora: LoraConfig = section(LoraConfig, "LoRA (unless --full)", prefix="lora_")
    lr: float = option(2e-4, "peak learning rate (linear decay after warmup)")
    warmup_ratio: float = option(0.1, "share of the steps spent warming the learning rate up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    batch_size: int = option(16, "examples per step (before gradient accumulation)")
    grad_accum: int = option(1, "gradient accumulation steps")
    epochs: float = option(1.0, "passes over the training examples (ignored when --max-steps is set)")
    max_steps: int = option(0, "stop after this many optimizer steps (0: --epochs decides)")
    max_length: int = option(512, "longest example in tokens (longer ones keep their start)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    dtype: str = option("auto", "mixed-precision compute (the weights stay float32): auto is bfloat16 on a GPU that "
                        "has it, float16 on other GPUs, float32 on CPU", TRAINING_DTYPES)
    logging_steps: int = option(5, "log the training loss every this many steps")
    report_to: str = option("none", REPORT_TO_HELP, TRACKERS)
    eval_steps: int = option(0, "evaluate held-out loss every this many steps (0: only before and after training)")
    save_steps: int = option(50, "write a resumable checkpoint every this many steps")
    save_total_limit: int = option(2, "keep at most this many checkpoints")
    resume: bool = option(False, "continue from the newest checkpoint in --out (optimizer, scheduler and RNG state)",
                          saved=False)
    stop_at_step: int = option(0, "stop after checkpointing at this step, as if interrupted (resume later; 0: off)")
    samples: int = option(8, "stories-tags: stories generated per condition to measure tag and word adherence; "
                          "instruct: held-out answers generated for BLEU (0: skip)")
    max_new_tokens: int = option(200, "most tokens per generated story or answer")
    temperature: float = option(0.8, "sampling temperature for the adherence stories (answers are greedy)")
    questions: str = option("", QUESTIONS_HELP + "; answers of up to --max-new-tokens, prompts in the run's template")
    seed: int = option(0, "seed of the split, LoRA initialisation, data order and samples")
    progress: bool = option(True, "show progress bars")

    def check(self):
        require("finetune", [(self.batch_size >= 1 and self.max_length >= 8 and 0 <= self.eval_fraction < 1,
                              "needs batch_size >= 1, max_length >= 8 and 0 <= eval_fraction < 1"),
                             (0 <= self.test_fraction and self.eval_fraction + self.test_fraction < 1,
                              f"test_fraction={self.test_fraction}: must be >= 0 and leave training examples "
                              f"(eval_fraction + test_fraction < 1)")])
        require_package(self.report_to)


TRIALS_GRID = "rank=4,8 alpha=8,16"


@dataclass
class TrialsConfig(Settings):
    """`talelab trials`: LoRA configurations (a grid or a list), each a `talelab finetune` or `talelab dpo` run,
    compared in one table."""

    method: str = option("sft", "what every trial runs: sft (`talelab finetune`, its flags below) or dpo (`talelab "
                         "dpo`, its flags prefixed --dpo-, e.g. --dpo-base, --dpo-data, --dpo-beta)", ("sft", "dpo"))
    grid: str = option(TRIALS_GRID, "space-separated key=v1,v2 lists; keys: rank, alpha, dropout, target_modules "
                       "(';' between choices), lr, batch_size, epochs, max_steps, beta (dpo) or any flag of the "
                       "method's command; a `trials:` list in --config YAML replaces it")
    trials: list[dict] = option([], "YAML only: the trials one by one, each {name: ..., key: value, ...} with the "
                                "grid's keys (target_modules a comma-separated string or a list); run and shown "
                                "in this order under their names, instead of the grid")
    out: str = option("runs/trials", "output: one folder per trial, results.md, results.csv, results.png")
    base_row: bool = option(True, "also measure the base model untuned (nothing trained; folder base/) the same way "
                            "as each trial: held-out loss, perplexities and BLEU or tag adherence (sft; dpo: held-out "
                            "reward figures), and the --questions figures, as the table's first row")
    finetune: dict = overrides(FinetuneConfig, "fine-tuning (every trial, method sft)",
                               skip=("out", "resume", "stop_at_step"))
    dpo: dict = overrides(PreferenceConfig, "DPO (every trial, method dpo)", skip=("out", "resume"), prefix="dpo_")

    def check(self):
        names = [t.get("name") if isinstance(t, dict) else None for t in self.trials]
        bad = next((i for i, name in enumerate(names) if not isinstance(name, str) or not name.strip()
                    or "/" in name or name == "base"), None)
        require("trials", [
            (bad is None, f"list entry {bad}: each trial must be a mapping with a 'name' (a folder name other than "
                          f"'base'), got {self.trials[bad] if bad is not None else ''!r}"),
            (len(set(names)) == len(names), f"two trials share a name ({', '.join(sorted(map(str, names)))})"),
            (not self.trials or self.grid == TRIALS_GRID, "give --grid or a trials list, not both"),
            (self.method != "dpo" or all(self.dpo.get(k) for k in ("base", "data")),
             "method dpo needs --dpo-base and --dpo-data (in YAML: dpo: {base: ..., data: ...})")])


@dataclass
class TagClassifierConfig(Settings):
    """`talelab tags train`: TF-IDF + one-vs-rest logistic regression over the six TinyStories features."""

    data: str = option("", "labelled stories: a prepared directory (its train.jsonl) or split of TinyStories "
                       "all_data, or all_data JSON (an array) or JSONL, records {\"story\", \"instruction\": "
                       "{\"features\": [...]}}, or a folder of such files")
    out: str = option("runs/tags", "output: classifier.json, report.md, report.json, f1.png")
    max_stories: int = option(0, "read at most this many labelled stories, in file order (0: all)")
    test_fraction: float = option(0.2, "share of the stories held out to score precision / recall / F1")
    seed: int = option(0, "seed of the held-out split")
    ngram_max: int = option(2, "longest word n-gram of the TF-IDF features")
    min_df: int = option(2, "ignore n-grams found in fewer stories than this")
    max_features: int = option(50000, "keep the most frequent n-grams up to this many (0: all)")
    c: float = option(1.0, "inverse regularisation strength of each logistic regression")
    threshold: float = option(0.5, "probability at or above which a story is said to show a feature")
