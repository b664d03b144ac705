"""`talelab compare`: the headline figures of several `talelab eval` reports side by side (compare.md, compare.csv)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from talelab.errors import ConfigError, InputError
from talelab.evaluate.report import format_value


def read_report(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: no such report (expected a report.json written by `talelab eval`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("headline"), dict):
        raise InputError(f"{p}: not a `talelab eval` report (no 'headline' figures)")
    return report


def compare_reports(paths: list[str], out: str | Path) -> str:
    """A side-by-side table of the reports' headline figures: compare.md and compare.csv in `out`; returns the
    markdown."""
    if len(paths) < 2:
        raise ConfigError("compare: give at least two report.json files")
    reports = [read_report(p) for p in paths]
    labels = [r.get("name") or Path(p).stem for r, p in zip(reports, paths)]
    if len(set(labels)) < len(labels):  # same model name twice: tell the columns apart by their files
        labels = [f"{label} ({p})" for label, p in zip(labels, paths)]
    figures = list(dict.fromkeys(k for r in reports for k in r["headline"]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["figure", *labels])
        for figure in figures:
            writer.writerow([figure, *("" if r["headline"].get(figure) is None else r["headline"][figure]
                                       for r in reports)])
    lines = ["| figure | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for figure in figures:
        lines.append(f"| {figure} | " + " | ".join(format_value(r["headline"].get(figure)) for r in reports) + " |")
    markdown = "\n".join(lines) + "\n"
    (out / "compare.md").write_text("# Comparison of evaluation reports\n\n" + markdown + "\nReports: " +
                                    ", ".join(f"`{p}`" for p in paths) + "\n", encoding="utf-8")
    return markdown
