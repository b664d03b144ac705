"""A recipe's report.md: every table of its study with the published row above talelab's, one sentence per table on
agreement (computed) and why it differs at this scale (the recipe's), every figure beside the study's caption.

A measured cell names where the value is read: `STAGE/FILE:KEY.PATH`, FILE a JSON, JSONL, YAML or CSV file (JSONL
and CSV are lists of rows) under the stage's output, KEY.PATH dot-separated keys, list indices or `[field=value]`
(the first row whose field is that value); e.g. `grid/results.csv:[name=d256].val_bpb`. A cell may also be
`{mean: SOURCE, sd: SOURCE}` (shown "mean ± sd") or a list of sources (their values joined by spaces: "teacher
0.13"). A row's `percent_of: SOURCE` shows its numbers as percentages of that value. A cell whose file a scale does
not produce stays empty.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import yaml

from talelab.atomic import write_text_atomic
from talelab.errors import ConfigError
from talelab.recipe.book import Recipe, substitute

SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[\]]+")


class NotMeasured(Exception):
    """The file a cell reads does not exist (its stage does not run at this scale) or lacks the key."""


def number(text: str):
    """A CSV cell as a number where it is one ('1,234' too: talelab's tables group thousands)."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_document(out: Path, file: str, documents: dict | None = None):
    """FILE under `out` as rows or a mapping; `documents` keeps what one report has read, since a table reads the
    same results file for dozens of cells."""
    if documents is not None:
        if file not in documents:
            documents[file] = read_document(out, file)
        return documents[file]
    path = out / file
    if not path.is_file():  # the stage and the file name say enough: "models-v2/…/report.json not written"
        stage, name = Path(file).parts[0], Path(file).name
        raise NotMeasured(f"{stage}/{'…/' if len(Path(file).parts) > 2 else ''}{name} not written")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if path.suffix == ".jsonl":  # a list of rows, as a CSV is
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return json.loads(path.read_text(encoding="utf-8"))


def lookup(document, key: str):
    value = document
    for segment in SEGMENT.findall(key):
        if segment.startswith("["):
            inner = segment[1:-1]
            if "=" in inner:
                field, _, wanted = inner.partition("=")
                matches = [row for row in value if isinstance(row, dict) and str(row.get(field)) == wanted] \
                    if isinstance(value, list) else []
                if not matches:
                    raise NotMeasured(f"no row with {field}={wanted}")
                value = matches[0]
            else:
                index = int(inner)
                if not isinstance(value, list) or not -len(value) <= index < len(value):
                    raise NotMeasured(f"no item {index}")
                value = value[index]
        elif isinstance(value, dict) and segment in value:
            value = value[segment]
        else:
            raise NotMeasured(f"no key '{segment}'")
    return value


def measured_value(out: Path, cell, documents: dict | None = None):
    """The value a measured cell names (a literal number or text stays as it is); NotMeasured when absent.
    `documents`: read_document's cache for one report."""
    if isinstance(cell, dict):
        return {part: measured_value(out, source, documents) for part, source in cell.items()}
    if isinstance(cell, list):
        return " ".join(shown(measured_value(out, source, documents)) for source in cell)
    if not isinstance(cell, str) or ":" not in cell:
        if cell is None:
            raise NotMeasured("not measured")
        return cell
    file, _, key = cell.partition(":")
    return lookup(read_document(out, file, documents), key)


def numeric(value) -> float | None:
    if isinstance(value, dict) and "mean" in value:
        value = value["mean"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def shown(value) -> str:
    """A cell as the report prints it: published values keep their digits, measured ones get four significant."""
    if value is None:
        return "—"
    if isinstance(value, dict) and "mean" in value:
        return f"{shown(value['mean'])} ± {shown(value.get('sd'))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|").replace("\n", " ")
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def concordance(published: list[float], measured: list[float]) -> tuple[int, int]:
    """(pairs ordered alike, pairs compared) over every pair of cells both sides rank strictly."""
    alike = compared = 0
    for i in range(len(published)):
        for j in range(i + 1, len(published)):
            a, b = published[i] - published[j], measured[i] - measured[j]
            if a and b:
                compared += 1
                alike += (a > 0) == (b > 0)
    return alike, compared


def agreement(table: dict, rows: list[tuple[list, list]]) -> str:
    """One computed sentence on how talelab's cells agree with the published ones, by the table's `compare` rule;
    `rows`: (published, measured) cells of each row, or of each column when the table compares down its rows."""
    lines = "columns" if table.get("compare_along") == "rows" else "rows"
    how = table.get("compare", "none")
    if how == "none":
        return ""
    pairs = []
    for published, measured in rows:
        cells = [(numeric(p), numeric(m)) for p, m in zip(published, measured)]
        cells = [(p, m) for p, m in cells if p is not None and m is not None]
        if cells:
            pairs.append(([p for p, _ in cells], [m for _, m in cells]))
    if not pairs:
        return "Nothing measured at this scale to compare."
    if how == "order":
        alike, compared = map(sum, zip(*(concordance(p, m) for p, m in pairs)))
        tops = sum(p.index(max(p)) == m.index(max(m)) for p, m in pairs if len(p) > 1)
        share = 100 * alike / max(compared, 1)
        return (f"Order: {alike} of {compared} pairs of cells are ranked alike ({share:.0f} %); "
                f"the largest value falls in the same place in {tops} of {len(pairs)} {lines}.")
    if how == "trend":
        steps = [(p[i + 1] - p[i], m[i + 1] - m[i]) for p, m in pairs for i in range(len(p) - 1)]
        alike = sum((a > 0) == (b > 0) for a, b in steps if a and b)
        return f"Trend: {alike} of {len(steps)} steps between neighbouring cells go the same way."
    ratios = sorted(abs(m - p) / abs(p) for ps, ms in pairs for p, m in zip(ps, ms) if p)
    median = ratios[len(ratios) // 2] if ratios else float("nan")
    return f"Values: the median cell differs from the published one by {100 * median:.1f} % ({len(ratios)} cells)."


def in_percent(value, whole_source, out: Path, documents: dict | None = None):
    """`value` as a percentage of the value `whole_source` names (a row's percent_of); as it is without one."""
    if whole_source is None or numeric(value) is None:
        return value
    whole = numeric(measured_value(out, whole_source, documents))
    return 100 * numeric(value) / whole if whole else None


def table_markdown(table: dict, out: Path, scale: str, names: dict[str, str],
                   documents: dict | None = None) -> tuple[str, dict]:
    where = f"table '{table['number']}'"  # only the measured cells name variables: published text may hold a '$'
    table = {**table, "rows": [{**row, "measured": substitute(row.get("measured"), names, where)}
                               for row in table.get("rows", [])]}
    columns = table.get("columns", [])
    lines = [f"### {table['number']}: {table.get('title', '')}", "",
             "| " + " | ".join([table.get("row_label") or "", "", *map(shown, columns)]) + " |",
             "|" + "---|" * (len(columns) + 2)]
    compared, absent, data = [], {}, []
    for row in table.get("rows", []):
        published = row.get("published") or [None] * len(columns)
        measured = []
        for cell in row.get("measured") or [None] * len(columns):
            try:
                value = measured_value(out, cell, documents)
                measured.append(in_percent(value, row.get("percent_of"), out, documents))
            except NotMeasured as e:
                measured.append(None)
                if cell is not None:
                    absent[str(e)] = absent.get(str(e), 0) + 1
        lines.append("| " + " | ".join([shown(row.get("label", "")), "published", *map(shown, published)]) + " |")
        if row.get("measured") is not None:
            lines.append("| " + " | ".join(["", "**talelab**", *map(shown, measured)]) + " |")
            compared.append((published, measured))
        data.append({"label": row.get("label"), "published": published,
                     "measured": measured if row.get("measured") is not None else None})
    if table.get("compare_along") == "rows" and compared:  # compare each column's cells down the rows
        columns_published = zip(*[p for p, _ in compared])
        columns_measured = zip(*[m for _, m in compared])
        compared = [(list(p), list(m)) for p, m in zip(columns_published, columns_measured)]
    sentence = agreement(table, compared)
    why = table.get("why", "")
    why = why.get(scale, why.get("default", "")) if isinstance(why, dict) else why
    if not compared:
        sentence = "Published only: talelab does not measure this table (shown for reference)."
    lines += ["", " ".join(s for s in (sentence, why) if s)]
    if absent:
        reasons = "; ".join(f"{count} {'cell' if count == 1 else 'cells'}: {reason}"
                            for reason, count in absent.items())
        lines.append(f"Empty talelab cells ({reasons}).")
    return "\n".join(lines) + "\n", {"number": table["number"], "columns": columns, "rows": data,
                                     "agreement": sentence, "why": why}


def figure_markdown(figure: dict, out: Path, names: dict[str, str]) -> str:
    figure = {**figure, "ours": substitute(figure.get("ours"), names, f"figure '{figure.get('number')}'")}
    lines = [f"### {figure.get('number', 'Figure')}: {figure.get('title', '')}", "",
             f"Published: {figure.get('shows', '')}".rstrip(), ""]
    ours = figure.get("ours") or []
    for path in dict.fromkeys([ours] if isinstance(ours, str) else ours):  # scales may map two models onto one
        if not (out / path).is_file():
            lines.append(f"({path} was not produced at this scale)")
        else:
            lines.append(f"![{path}]({path})" if path.endswith(".png") else f"[{path}]({path})")
    if not ours:
        lines.append(f"Not reproduced: {figure.get('why', 'no talelab stage draws it')}")
    elif figure.get("why"):
        lines += ["", figure["why"]]
    return "\n".join(lines) + "\n"


def stage_times(recipe: Recipe, scale: str, out: Path) -> tuple[list[str], list[dict]]:
    lines, data = ["| stage | command | seconds |", "|---|---|---:|"], []
    for stage in recipe.stages_at(scale):
        done = out / "stages" / f"{stage.name}.done.json"
        seconds = json.loads(done.read_text(encoding="utf-8"))["seconds"] if done.exists() else None
        lines.append(f"| {stage.name} | talelab {stage.command} | {shown(seconds)} |")
        data.append({"stage": stage.name, "command": stage.command, "seconds": seconds})
    total = sum(d["seconds"] or 0 for d in data)
    lines.append(f"| all | | {total:,.0f} |")
    return lines, data


def write_report(recipe: Recipe, scale: str, out: Path, names: dict[str, str]) -> Path:
    """<out>/report.md and report.json from what the stages wrote; `names`: the ${...} variables at this scale."""
    out = Path(out)
    if not recipe.tables:
        raise ConfigError(f"{recipe.path}: no tables to report")
    times, time_data = stage_times(recipe, scale, out)
    lines = [f"# {recipe.title}: reproduced with talelab", "",
             f"Recipe `{recipe.name}` at scale **{scale}** ({recipe.scales.get(scale, '')}); the study: "
             f"`studies/{recipe.study}`. {recipe.summary}", ""]
    stand_ins = recipe.stand_ins.get(scale, [])
    if stand_ins:
        lines += ["Stand-ins at this scale:", "", *[f"- {s}" for s in stand_ins], ""]
    lines += ["## Stages", "", *times, "", "## Tables", "",
              "Each row gives the published values, then talelab's measured at this scale (— where this scale does "
              "not measure it).", ""]
    tables = []
    documents: dict = {}  # every file the tables read, read once
    for table in recipe.tables:
        text, data = table_markdown(table, out, scale, names, documents)
        lines.append(text)
        tables.append(data)
    if recipe.figures:
        lines += ["## Figures", ""] + [figure_markdown(f, out, names) for f in recipe.figures]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    write_text_atomic(out / "report.json", json.dumps({"recipe": recipe.name, "scale": scale, "stand_ins": stand_ins,
                                                       "stages": time_data, "tables": tables}, indent=2) + "\n")
    return report
