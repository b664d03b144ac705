"""Sweeps of decoding settings: the same prompt sampled under each setting (or grid of settings), scored for
diversity (Self-BLEU, distinct-n, similarity across generations) and, where those sections exist, novelty and
quality, in one table like seed 000's (markdown, CSV and a PNG).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from talelab.config import SamplingConfig
from talelab.data.tags import story_of
from talelab.settings import grid_axis
from talelab.errors import ConfigError
from talelab.evaluate.overlap import diversity
from talelab.plots import bars_per_setting

SWEEP_KEYS = {"temperature": float, "top_k": int, "top_p": float, "num_beams": int, "repetition_penalty": float}
COLUMNS = ("self_bleu", "distinct_1", "distinct_2", "distinct_3", "max_rouge2_to_others_mean")
LABELS = {"self_bleu": "Self-BLEU", "distinct_1": "distinct-1", "distinct_2": "distinct-2", "distinct_3": "distinct-3",
          "max_rouge2_to_others_mean": "max ROUGE-2 to others", "novelty_bleu": "novelty BLEU", "novelty": "novelty",
          "quality": "quality"}


def parse_sweep(text: str) -> list[dict]:
    """'temperature=0.6,0.8 top_p=0.9,1' (keys separated by spaces or ';') -> every combination as {key: value}."""
    axes, seen = [], set()
    for part in [p for p in re.split(r"[\s;]+", text.strip()) if p]:
        key, equals, values = part.partition("=")
        if key not in SWEEP_KEYS or not equals or not values.strip(","):
            raise ConfigError(f"--sweep: '{part}' is not key=v1,v2,... with key one of {', '.join(SWEEP_KEYS)}")
        if key in seen:
            raise ConfigError(f"--sweep: '{key}' is given twice")
        seen.add(key)
        axes.append(grid_axis("--sweep", key, values.split(","), SWEEP_KEYS[key]))
    if not axes:
        raise ConfigError(f"--sweep {text!r}: no settings (expected e.g. 'temperature=0.6,0.8,1.2')")
    return [dict(combination) for combination in itertools.product(*axes)]


def setting_label(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def sweep_section(complete, base: SamplingConfig, settings: list[dict], samples: int, out_dir: Path,
                  scorers: dict[str, Callable[[list[str]], float]] | None = None, progress: bool = True) -> dict:
    """Sample `samples` stories from `base.prompt` under each setting (the other settings as in `base`) and score
    them (each as tags.story_of gives it: an Instruct prompt's header is no part of a story); `scorers` adds columns
    (e.g. novelty, quality) computed from the stories."""
    # replace() checks each setting as it builds it, so a bad one is refused before any story is generated
    configs = [dataclasses.replace(base, **setting) for setting in settings]
    scorers = scorers or {}
    rows = []
    for setting, config in tqdm(list(zip(settings, configs)), desc="sweep", unit="setting", disable=not progress):
        stories = [story_of(config.prompt, c) for c in complete([config.prompt] * samples, config)]
        scores = diversity(stories)
        row = {"setting": setting_label(setting), **setting, **{c: scores[c] for c in COLUMNS}}
        for name, score in scorers.items():
            row[name] = score(stories)
        row["example"] = stories[0]
        rows.append(row)
    columns = ["setting", *settings[0], *COLUMNS, *scorers]
    with open(out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    metrics = [*COLUMNS, *scorers]
    keys = list(settings[0])
    charted = {LABELS.get(m, m): [row[m] if isinstance(row[m], (int, float)) else math.nan for row in rows]
               for m in ("self_bleu", "distinct_2", *scorers)}
    bars_per_setting([" / ".join(str(row[k]) for k in keys) for row in rows], charted, out_dir / "sweep.png",
                     " / ".join(keys))
    header = ["setting", *(LABELS.get(m, m) for m in metrics)]
    lines = [f"{samples} stories from {base.prompt!r} per setting; other settings: temperature {base.temperature}, "
             f"top-k {base.top_k}, top-p {base.top_p}, beams {base.num_beams}, repetition penalty "
             f"{base.repetition_penalty}, at most {base.max_new_tokens} new tokens. Lower Self-BLEU and higher "
             f"distinct-n mean more varied stories.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        lines.append(f"| {row['setting']} | " + " | ".join(number(row[m]) for m in metrics) + " |")
    if any(config.num_beams > 1 and not config.beam_sample for config in configs):
        lines += ["", "Beam search is deterministic: every story of a beam setting is the same, so its Self-BLEU is 1."]
    if "novelty_bleu" in scorers:
        lines += ["", "Novelty BLEU: mean BLEU of each story against sampled training stories, as the memorization "
                  "section defines it; lower is more novel. Novelty: 1 - novelty BLEU; higher is more novel. "
                  "Quality: the quality score in [0, 1]."]
    lines += ["", "Written: sweep.csv, sweep.png.", "", "![sweep](sweep.png)"]
    return {"rows": rows, "columns": columns, "markdown": "\n".join(lines), "charts": ["sweep.png"],
            "files": ["sweep.csv"]}


def number(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)
