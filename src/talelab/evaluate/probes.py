"""Probe prompts with accepted answers: does a model complete everyday facts, one-step reasoning and story context?

Three sets ship with talelab (`probes/factual.json`, `reasoning.json`, `context.json`); a set may also be any JSON
file of the same shape: `{"name", "description", "max_words", "probes": [{"prompt", "answers": [...]}]}`.

Scoring rule: the completion (greedy, the prompt not included) is cut at the end of its first sentence and then to
its first `max_words` words (5 in the bundled sets); the probe passes when one of its accepted answers appears there
as whole words, ignoring case. "library." passes for "library"; "libraries" does not (list plurals as answers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from talelab.config import SamplingConfig
from talelab.data.sentences import split_sentences
from talelab.errors import ConfigError, InputError
from talelab.evaluate.completion import Complete
from talelab.evaluate.render import cell
from talelab.plots import grouped_bar_chart

PROBE_DIR = Path(__file__).parent / "probes"
DEFAULT_SETS = ("factual", "reasoning", "context")
# Greedy and short: a probe asks for the next few words, not a story.
PROBE_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=24, seed=0)


def bundled_sets() -> list[str]:
    return sorted(path.stem for path in PROBE_DIR.glob("*.json"))


def load_probe_set(name: str) -> dict:
    """A bundled set by name, or a JSON file of the same shape; a one-line error naming the file and probe at fault."""
    path = PROBE_DIR / f"{name}.json" if (PROBE_DIR / f"{name}.json").is_file() else Path(name)
    if not path.is_file():
        raise ConfigError(f"probe set '{name}': neither a bundled set ({', '.join(bundled_sets())}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    probes = data.get("probes") if isinstance(data, dict) else None
    if not isinstance(probes, list) or not probes:
        raise InputError(f"{path}: expected an object with a non-empty list 'probes'")
    max_words = data.get("max_words", 5)
    if not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1:
        raise InputError(f"{path}: max_words must be a positive integer, not {max_words!r}")
    for i, probe in enumerate(probes):
        answers = probe.get("answers") if isinstance(probe, dict) else None
        if (not isinstance(probe, dict) or not isinstance(probe.get("prompt"), str) or not probe["prompt"].strip()
                or not isinstance(answers, list) or not answers
                or not all(isinstance(a, str) and a.strip() for a in answers)):
            raise InputError(f"{path}: probe {i}: expected {{\"prompt\": text, \"answers\": [non-empty texts]}}")
    return {"name": data.get("name", path.stem), "description": data.get("description", ""),
            "max_words": max_words, "probes": probes}


def answer_window(completion: str, max_words: int) -> str:
    """The part of a completion that is scored: its first sentence, cut to `max_words` words."""
    sentences = split_sentences(completion.strip())
    return " ".join(sentences[0].split()[:max_words]) if sentences else ""


def passes(completion: str, answers: list[str], max_words: int) -> bool:
    window = answer_window(completion, max_words)
    return any(re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", window, re.IGNORECASE) for answer in answers)


def run_probes(complete: Complete, sets: list[str] | None = None,
               config: SamplingConfig | None = None) -> list[dict]:
    """Each set with its probes completed and scored; one call to `complete` for all prompts (batched)."""
    loaded = [load_probe_set(name) for name in (sets or DEFAULT_SETS)]
    prompts = [probe["prompt"] for s in loaded for probe in s["probes"]]
    completions = iter(complete(prompts, config or PROBE_SAMPLING))
    for s in loaded:
        for probe in s["probes"]:
            probe["completion"] = next(completions)
            probe["passed"] = passes(probe["completion"], probe["answers"], s["max_words"])
        s["passed"] = sum(p["passed"] for p in s["probes"])
        s["accuracy"] = s["passed"] / len(s["probes"])
    return loaded


def probes_section(complete: Complete, out_dir: Path, sets: list[str] | None = None,
                   config: SamplingConfig | None = None) -> dict:
    """Accuracy per probe set, every prompt with its completion and verdict (markdown), and probes.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_probes(complete, sets, config)
    names = [s["name"] for s in results]
    grouped_bar_chart(names, {"accuracy": [s["accuracy"] for s in results]}, out_dir / "probes.png",
                      "share of probes passed", "Probes: accepted answer in the first words", ylim=(0, 1))
    lines = ["## Probes", "",
             "Greedy completions of short prompts. A probe passes when an accepted answer appears, as whole words "
             "and ignoring case, in the completion's first sentence cut to its first few words (`max_words`).", "",
             "| set | passed | accuracy | what it asks |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['passed']}/{len(s['probes'])} | {s['accuracy']:.2f} | {cell(s['description'])} |"
              for s in results]
    lines += ["", "![probes](probes.png)"]
    for s in results:
        lines += ["", f"### {s['name']} (first {s['max_words']} words of the first sentence)", "",
                  "| prompt | completion | accepted | pass |", "|---|---|---|---|"]
        lines += [f"| {cell(p['prompt'])} | {cell(p['completion'], 120)} | {cell(', '.join(p['answers']))} | "
                  f"{'yes' if p['passed'] else 'no'} |" for p in s["probes"]]
    return {"markdown": "\n".join(lines) + "\n", "charts": ["probes.png"],
            "accuracy": {s["name"]: s["accuracy"] for s in results},
            "sets": [{key: s[key] for key in ("name", "description", "max_words", "passed", "accuracy", "probes")}
                     for s in results]}
