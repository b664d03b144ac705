"""`talelab eval MODEL`: run the chosen suites on a talelab or Hugging Face model and write report.md, report.json
and PNG charts (`talelab compare` lines up their headline figures: evaluate/compare.py).

Every section is a JSON-serialisable dict with a "markdown" key (its part of report.md), optional "charts" (PNG file
names in the report directory) and optional "headline" (the figures `talelab compare` shows). A section that fails
(a judge endpoint down, a missing file) is kept as {"status": "failed", "error": one line}; the others still run.

Which stories each section reads:
- likelihood scores the validation text (--text, by the reference protocol unless --protocol documents);
- completion continues the first --fraction of --stories held-out texts (--data; the first ones, or drawn at random
  with --completion-sample random) and compares with the true ending;
- diversity, memorization, quality and judge read the same --samples stories, each sampled from --prompt (a plain
  prompt is part of the story, as a reader sees it; of an Instruct prompt, Features/Words/Summary lines and then
  'Story:', only what follows 'Story:' is); completions are left out of them because their beginnings are
  human-written;
- tags (under the same sampling settings) and probes (greedily) generate from their own prompts through the same
  batched `complete` function;
- a --sweep samples --samples stories from --prompt per setting.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path

from tqdm import tqdm

from talelab.atomic import write_text_atomic
from talelab.config import EVAL_SUITES, EvalConfig, SamplingConfig
from talelab.data.sources import iter_texts, resolve_source
from talelab.data.split_view import SplitView
from talelab.data.tags import story_of, story_part
from talelab.errors import ConfigError, InputError, TalelabError
from talelab.evaluate.completion import Complete, completer, completion_section, held_out_texts, quote
from talelab.evaluate.judge import judge_section
from talelab.evaluate.likelihood import score_documents, validation_documents
from talelab.evaluate.memorization import memorization_section, novelty_bleu, novelty_figures
from talelab.evaluate.overlap import TOKENIZERS_NOTE, diversity
from talelab.evaluate.probes import probes_section
from talelab.evaluate.quality import quality_section, summarize as summarize_quality
from talelab.evaluate.sweep import parse_sweep, sweep_section
from talelab.evaluate.tags import tags_section
from talelab.generate import load_decoder
from talelab.plots import score_histogram

DEFAULT_SUITES = tuple(s for s in EVAL_SUITES if s != "judge")
TITLES = {"likelihood": "Likelihood", "completion": "Completion protocol", "diversity": "Diversity",
          "memorization": "Novelty and memorization", "quality": "Quality score", "tags": "Tag adherence",
          "probes": "Probes", "judge": "LLM judge", "sweep": "Decoding sweep"}
QUALITY_REFERENCE_STORIES = 200
# numbers in a section that describe how it ran rather than how the model did
NOT_FIGURES = {"seconds", "stories_per_feature", "texts", "fraction", "samples", "top", "documents", "tokens", "bytes",
               "nll_nats", "markdown", "charts", "status"}


def parse_suites(text: str) -> list[str]:
    """'likelihood,diversity' -> the suites in report order; 'default' and 'all' name the usual sets."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    chosen = set()
    for name in names:
        if name == "default":
            chosen.update(DEFAULT_SUITES)
        elif name == "all":
            chosen.update(EVAL_SUITES)
        elif name in EVAL_SUITES:
            chosen.add(name)
        else:
            raise ConfigError(f"--suite: unknown suite '{name}' (choose from {', '.join(EVAL_SUITES)}, default, all)")
    if not chosen:
        raise ConfigError(f"--suite {text!r}: no suite named")
    return [s for s in EVAL_SUITES if s in chosen]


def read_stories(source: str, data_root=None) -> SplitView:
    """Training stories, read on demand: a prepared directory's train.jsonl or a JSONL file in place; a text file
    (path or under the data root) or other source spooled once into a temporary JSONL file."""
    path = Path(source)
    if path.is_dir():
        path = path / "train.jsonl"
        if not path.is_file():
            raise InputError(f"{source}: a directory without train.jsonl (expected a prepared directory or a file)")
    resolved = resolve_source(str(path), data_root)
    if resolved is not None and resolved.name.lower().endswith(".jsonl"):
        stories = SplitView(resolved)
    else:
        stories = SplitView.of_texts(iter_texts(path, data_root=data_root), name=str(resolved or path))
    if not len(stories):
        raise InputError(f"{source}: no training stories")
    return stories


@dataclass
class Evaluation:
    """One evaluation run: the model, its generation function, and inputs read once for every section."""

    model: object
    tokenizer: object
    config: EvalConfig
    out: Path
    data_root: str | None = None
    complete: Complete = field(init=False)  # batched continuations of prompts under `sampling` (or a given config)

    def __post_init__(self):
        self.complete = completer(self.model, self.tokenizer, self.sampling, self.config.batch_size,
                                  self.config.progress)

    @property
    def sampling(self) -> SamplingConfig:
        """The generation settings every section shares."""
        return self.config.sampling

    @cached_property
    def samples(self) -> list[str]:
        """--samples stories from --prompt, each the prompt's story part and what the model wrote (tags.story_of)."""
        prompt = self.sampling.prompt
        return [story_of(prompt, c) for c in self.complete([prompt] * self.config.samples)]

    @cached_property
    def train_stories(self) -> SplitView:
        """--train-data's stories, read from disk on demand: a 2.1M-story split is never held in memory."""
        return read_stories(self.config.train_data, self.data_root)


def likelihood(ev: Evaluation) -> dict:
    c = ev.config
    path, documents = validation_documents(c.text, c.protocol, ev.data_root)
    scores = score_documents(ev.model, ev.tokenizer, documents, batch_size=c.batch_size)
    how = ("the reference protocol of shared/README.md (blank-line pieces 2..301, each scored on its own after the "
           "beginning-of-story token)" if c.protocol == "reference" else "every document, each on its own")
    lines = [f"Text: `{path}`, {scores['documents']} documents by {how}.", "",
             "| loss (nats/token) | perplexity | mean document perplexity | bits per byte | tokens | bytes | "
             "bytes per token |", "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {scores['loss']:.4f} | {scores['perplexity']:.2f} | {scores['mean_document_perplexity']:.2f} | "
             f"{scores['bits_per_byte']:.4f} | {scores['tokens']:,} | {scores['bytes']:,} | "
             f"{scores['bytes_per_token']:.3f} |", "",
             "Perplexity is exp(loss), the loss averaged over every token; mean document perplexity averages each "
             "document's own exp(loss), so every document weighs the same. "
             "Loss and perplexity are per token, so they depend on how the tokenizer cuts the text. Bits per byte "
             "(total negative log-likelihood in bits / UTF-8 bytes of the text) do not: they make models with "
             "different tokenizers comparable."]
    if "note" in scores:
        lines += ["", f"Note: {scores['note']}."]
    return {"text": str(path), "protocol": c.protocol, **scores, "markdown": "\n".join(lines),
            "headline": {k: scores[k] for k in ("bits_per_byte", "loss", "perplexity", "mean_document_perplexity")}}


def completion(ev: Evaluation) -> dict:
    c = ev.config
    texts = held_out_texts(c.data, c.stories, c.min_words, ev.data_root, c.completion_sample, c.sampling.seed)
    chosen = f"{c.stories} of at least {c.min_words} words"
    chosen = f"the first {chosen}" if c.completion_sample == "first" else \
        f"{chosen} drawn at random with seed {c.sampling.seed}"
    return completion_section(ev.complete, texts, c.fraction, c.cut, ev.out, source=f"from `{c.data}`, {chosen}")


def diversity_section(ev: Evaluation) -> dict:
    scores = diversity(ev.samples)
    score_histogram({"": scores["max_rouge2_to_others"]}, ev.out / "diversity_similarity.png",
                    "max ROUGE-2 F1 against the other generations", "texts",
                    f"similarity across {len(ev.samples)} generations from {ev.sampling.prompt!r}")
    prompt = ev.sampling.prompt
    lines = [f"{len(ev.samples)} stories sampled from {prompt!r} ({prompt_in_stories(prompt)}).", "",
             "| Self-BLEU | distinct-1 | distinct-2 | distinct-3 | max ROUGE-2 to others: mean | max |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {scores['self_bleu']:.4f} | {scores['distinct_1']:.4f} | {scores['distinct_2']:.4f} | "
             f"{scores['distinct_3']:.4f} | {scores['max_rouge2_to_others_mean']:.4f} | "
             f"{scores['max_rouge2_to_others_max']:.4f} |", "",
             "Self-BLEU: smoothed BLEU-1..4 of each story against all the others, averaged (1: all identical). "
             "distinct-n: unique word n-grams over all n-grams. Max ROUGE-2 to others: each story's highest "
             "ROUGE-2 F1 against any other story.", "", "![similarity](diversity_similarity.png)", ""]
    for i, story in enumerate(ev.samples[:3]):
        lines += [f"**Sample {i + 1}:** {quote(story)}", ""]
    headline = {k: scores[k] for k in ("self_bleu", "distinct_1", "distinct_2", "distinct_3",
                                       "max_rouge2_to_others_mean")}
    return {**scores, "samples": ev.samples, "markdown": "\n".join(lines), "charts": ["diversity_similarity.png"],
            "headline": headline}


def memorization(ev: Evaluation) -> dict:
    return memorization_section(ev.samples, ev.train_stories, ev.out, progress=ev.config.progress,
                                rouge_search=ev.config.rouge_search)


def quality(ev: Evaluation) -> dict:
    return quality_section(ev.samples, ev.train_stories[:QUALITY_REFERENCE_STORIES], ev.out)


def tags(ev: Evaluation) -> dict:
    return tags_section(ev.complete, ev.out, stories_per_feature=ev.config.stories_per_feature,
                        classifier=ev.config.classifier or None, progress=ev.config.progress, config=ev.sampling)


def probes(ev: Evaluation) -> dict:
    sets = [s.strip() for s in ev.config.probe_sets.split(",") if s.strip()] or None
    return probes_section(ev.complete, ev.out, sets=sets)


def judge(ev: Evaluation) -> dict:
    return judge_section(ev.samples, ev.config.judge, ev.out, progress=ev.config.progress)


def sweep(ev: Evaluation) -> dict:
    return sweep_section(ev.complete, ev.sampling, parse_sweep(ev.config.sweep), ev.config.samples, ev.out,
                         scorers=sweep_scorers(ev), progress=ev.config.progress)


def sweep_scorers(ev: Evaluation) -> dict:
    """Novelty BLEU and novelty (as the memorization section defines them) and quality columns for the sweep."""
    @lru_cache(maxsize=1)  # a setting's two novelty columns read one computation
    def novelty(stories: tuple) -> dict:
        return novelty_figures(sum(novelty_bleu(list(stories), ev.train_stories)) / len(stories))

    return {"novelty_bleu": lambda stories: novelty(tuple(stories))["novelty_bleu"],
            "novelty": lambda stories: novelty(tuple(stories))["novelty"],
            "quality": lambda stories: summarize_quality(stories)["quality"]}  # the figure only: no chart to draw


def prompt_in_stories(prompt: str) -> str:
    """What of --prompt the scored stories hold, in the report's words."""
    return "prompt included" if story_part(prompt) == prompt else "only the story after the prompt's 'Story:'"


RUNNERS = {"likelihood": likelihood, "completion": completion, "diversity": diversity_section,
           "memorization": memorization, "quality": quality, "tags": tags, "probes": probes, "judge": judge,
           "sweep": sweep}


def model_name(model_path) -> str:
    """The model directory's name, with its parent's when the name alone says little (runs/demo/model: demo-model)."""
    path = Path(str(model_path)).resolve()
    return f"{path.parent.name}-{path.name}" if path.name == "model" or path.name.startswith("step-") else path.name


def default_out(model_path) -> Path:
    return Path("runs") / "eval" / model_name(model_path)


def check_out(out: Path) -> None:
    """Refuse to write into a folder that holds something other than an earlier report."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_report_dir(out):
        raise ConfigError(f"--out {out}: exists and is not a report directory of `talelab eval`; choose another")


def is_report_dir(out: Path) -> bool:
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"sections", "headline"} <= set(report)


def prepare_out(out: Path) -> None:
    """Create the report directory, without the charts and tables of an earlier run."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.csv")]:  # charts of an earlier run must not pass for this one's
        old.unlink()


def run_eval(config: EvalConfig, data_root=None) -> dict:
    """Run the suites of `config` on its model and write report.md, report.json and the charts into the out
    folder."""
    model_path = config.model
    suites = parse_suites(config.suite)
    if config.sweep:
        parse_sweep(config.sweep)  # a malformed sweep is refused before the model loads
        suites.append("sweep")
    out = Path(config.out) if config.out else default_out(model_path)
    check_out(out)
    started = time.perf_counter()
    model, tokenizer, _ = load_decoder(model_path, config.decode)
    ev = Evaluation(model, tokenizer, config, out, data_root)
    prepare_out(out)
    sections = {}
    bar = tqdm(suites, desc="eval", unit="section", disable=not config.progress)
    for name in bar:
        bar.set_postfix_str(name)
        begun = time.perf_counter()
        try:
            section = {"status": "ok", **RUNNERS[name](ev)}
        except (TalelabError, OSError, ImportError) as e:
            section = failed(e)
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the user the whole report
            section = failed(e, unexpected=True)
        section["seconds"] = round(time.perf_counter() - begun, 2)
        sections[name] = section
    bar.close()
    report = {"model": str(model_path), "name": model_name(model_path),
              "parameters": sum(p.numel() for p in model.parameters()),
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "seconds": round(time.perf_counter() - started, 1), "config": asdict(config),
              "judge": asdict(config.judge) if "judge" in suites else None, "tokenizers": TOKENIZERS_NOTE,
              "sections": sections}
    report["headline"] = headline(report)
    write_report(report, out)
    report["out"] = str(out)
    return report


def failed(error: BaseException, unexpected: bool = False) -> dict:
    reason = " ".join(str(error).split()) or type(error).__name__
    if unexpected or isinstance(error, ImportError):
        reason = f"{type(error).__name__}: {reason}"
    return {"status": "failed", "error": reason, "markdown": f"**Failed:** {reason}"}


def headline(report: dict) -> dict:
    """{'section.figure': value} of every section that ran: its "headline", else its top-level numbers."""
    figures = {"parameters": report["parameters"]}
    for name, section in report["sections"].items():
        if section.get("status") != "ok":
            continue
        chosen = section.get("headline")
        figures.update(numbers(chosen if chosen is not None else section, name))
    return figures


def numbers(values: dict, prefix: str, depth: int = 3) -> dict:
    """{'prefix.key(.subkey)': number} of a section's figures, nested dicts flattened; settings and timings left
    out."""
    found = {}
    for key, value in values.items():
        if key in NOT_FIGURES:
            continue
        if isinstance(value, dict) and depth > 1:
            found.update(numbers(value, f"{prefix}.{key}", depth - 1))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}.{key}"] = value
    return found


def failures(report: dict) -> list[str]:
    """'section (reason)' for every failed section."""
    return [f"{name} ({s['error']})" for name, s in report["sections"].items() if s["status"] != "ok"]


def headline_markdown(report: dict) -> str:
    """The headline figures as a markdown table, then the failed sections if any."""
    lines = ["| figure | value |", "|---|---:|"]
    lines += [f"| {k} | {format_value(v)} |" for k, v in report["headline"].items()]
    if failures(report):
        lines += ["", f"**Failed sections:** {'; '.join(failures(report))}"]
    return "\n".join(lines)


def json_safe(value):
    """NaN and infinities become null: report.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict, out: Path) -> None:
    c, s = report["config"], report["config"]["sampling"]
    lines = [f"# Evaluation: {report['name']}", "",
             f"Model `{report['model']}` ({report['parameters']:,} parameters), written {report['created']} in "
             f"{report['seconds']} s. Generation: temperature {s['temperature']}, top-k {s['top_k']}, top-p "
             f"{s['top_p']}, beams {s['num_beams']}, repetition penalty {s['repetition_penalty']}, at most "
             f"{s['max_new_tokens']} new tokens, seed {s['seed']} (story i uses seed + i). Diversity, memorization, "
             f"quality and judge read the same {c['samples']} stories sampled from {s['prompt']!r} "
             f"({prompt_in_stories(s['prompt'])}); completion and tags generate from their own prompts with these "
             f"settings, probes greedily.", "",
             "## Headline figures", "", headline_markdown(report)]
    for name, section in report["sections"].items():
        body = section["markdown"].strip()
        if section["status"] != "ok" or not body.startswith("#"):  # a section may bring its own title
            status = "" if section["status"] == "ok" else " (failed)"
            body = f"## {TITLES.get(name, name)}{status}\n\n{body}"
        lines += ["", body]
    lines += ["", "## How the text metrics tokenize", "", TOKENIZERS_NOTE, ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_text_atomic(out / "report.json", json.dumps(json_safe(report), indent=2, ensure_ascii=False) + "\n")


def format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if abs(value) >= 1000 or abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")
