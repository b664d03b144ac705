"""The quality section of `talelab eval`: the quality score (talelab.data.quality, the one prepare's --min-quality
filters by) of the generated stories next to reference stories, component by component, with both distributions
in quality_scores.png."""

from __future__ import annotations

from pathlib import Path

from talelab.data.quality import WEIGHTS, quality_components, weighted_score
from talelab.errors import InputError
from talelab.plots import score_histogram


def summarize(texts: list[str]) -> dict:
    """Mean score and mean components over texts, plus every score (for the histogram)."""
    components = [quality_components(t) for t in texts]
    scores = [weighted_score(c) for c in components]
    means = {name: round(sum(c[name] for c in components) / len(texts), 4) for name in WEIGHTS}
    return {"texts": len(texts), "quality": round(sum(scores) / len(scores), 4), "components": means,
            "scores": [round(s, 4) for s in scores]}


def quality_section(generations: list[str], reference: list[str], out_dir: Path) -> dict:
    """Quality of the generated stories next to reference stories: means, per-component means and a histogram."""
    if not generations:
        raise InputError("quality: no generated stories to score")
    ours = summarize(generations)
    theirs = summarize(reference) if reference else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    score_histogram({"generated": ours["scores"], "reference": theirs["scores"] if theirs else []},
                    out_dir / "quality_scores.png", "quality score", "share of stories", bins=40, shares=True)
    reference_mean = theirs["quality"] if theirs else float("nan")
    section = {"headline": {"quality": ours["quality"], "reference_quality": reference_mean},
               "generations": ours, "reference": theirs, "weights": WEIGHTS, "charts": ["quality_scores.png"]}
    section["markdown"] = render_markdown(ours, theirs)
    return section


def render_markdown(ours: dict, theirs: dict | None) -> str:
    def figure(summary, name=None):
        if summary is None:
            return "n/a"
        return f"{summary['components'][name] if name else summary['quality']:.3f}"

    lines = [f"Quality score in [0, 1] (talelab.data.quality): a weighted mean of the components below, over "
             f"{ours['texts']} generated stories and {theirs['texts'] if theirs else 0} reference stories.", "",
             "| component | weight | generated | reference |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {weight} | {figure(ours, name)} | {figure(theirs, name)} |"
              for name, weight in WEIGHTS.items()]
    lines += [f"| **quality score** | | **{figure(ours)}** | **{figure(theirs)}** |", "",
              "vocabulary: distinct/total words in the first 200, /0.5; sentence_variety: distinct two-word "
              "openings per sentence; dialogue: quoted speech; length: 1 for 80-400 words; repetition: distinct "
              "word 3-grams per 3-gram; long_words: words over 15 characters; special_characters: characters "
              "outside letters, digits, spaces and story punctuation.", "",
              "![quality scores](quality_scores.png)", ""]
    return "\n".join(lines)
