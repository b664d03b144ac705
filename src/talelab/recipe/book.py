"""A recipe file: the study it reproduces, its stages (talelab commands with their configs, per scale) and the
study's tables and figures, each published value kept beside where talelab's own value is read from.

    study: lora-tagged-stories.txt      # under <data root>/studies/
    scales: {smoke: "...", cpu: "...", full: "..."}   # what each scale runs, one line each
    stand_ins: {cpu: ["stories260K for DistilGPT2", ...]}
    stages:
      - name: corpus                    # its outputs go to <out>/corpus
        command: prepare                # a talelab command, run as `talelab prepare --config <the stage's YAML>`
        config: {source: ..., out: "${out}/corpus"}
        scale: {smoke: {max_documents: 200}}   # merged over config at that scale
        resume: {resume: true}          # merged when an interrupted stage runs again
        scales: [cpu, full]             # where it runs (default: every scale)
    tables:
      - number: "Table 3"
        columns: [...]
        rows: [{label: ..., published: [...], measured: ["corpus/report.json:kept", ...]}]
        compare: order                  # how agreement is judged (talelab.recipe.report)
        why: "..."                      # why it may differ at a small scale

Strings in stage configs, measured cells and figure paths may name `${out}` (the recipe's output folder), `${data}`
(the data root), `${recipe}` (the folder of the recipe file, for files a recipe brings), `${scale}`, and the recipe's
own `variables` for the scale (e.g. which sweep run stands for the study's "256-8-4" at that scale):

    variables:
      every: {judge: "eval/report.json:sections.judge.categories"}   # at every scale, under the scale's own
      cpu: {m256_8_4: d_model128-n_layers2-n_heads4}
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from talelab.commands import COMMANDS
from talelab.errors import ConfigError
from talelab.paths import CHECKOUT
from talelab.settings import load_yaml, merge

SCALES = ("smoke", "cpu", "full")
RECIPES_DIR = CHECKOUT / "recipes"
COMPARISONS = ("order", "trend", "values", "none")
STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass
class Stage:
    name: str
    command: str
    config: dict
    scale: dict[str, dict] = field(default_factory=dict)
    resume: dict = field(default_factory=dict)
    scales: tuple[str, ...] = SCALES
    preset: str = ""
    note: str = ""

    def values(self, scale: str, variables: dict[str, str]) -> dict:
        """The stage's config at `scale`, with ${...} variables filled in."""
        values = merge(copy.deepcopy(self.config), copy.deepcopy(self.scale.get(scale, {})))
        return substitute(values, variables, f"stage '{self.name}'")


@dataclass
class Recipe:
    name: str
    path: Path
    study: str
    title: str
    summary: str
    scales: dict[str, str]
    stand_ins: dict[str, list[str]]
    stages: list[Stage]
    tables: list[dict]
    figures: list[dict]
    variables: dict[str, dict[str, str]] = field(default_factory=dict)

    def stages_at(self, scale: str) -> list[Stage]:
        return [stage for stage in self.stages if scale in stage.scales]


def substitute(value, variables: dict[str, str], where: str):
    """`value` with ${name} replaced in every string inside it; an unknown name is a ConfigError."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if isinstance(value, str):
        try:
            return Template(value).substitute(variables)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{where}: '{value}' names an unknown variable {e} (known: "
                              f"{', '.join('${' + k + '}' for k in variables)})") from None
    return value


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_recipe(name: str) -> Path:
    """A recipe file: a path as given, else recipes/NAME.yaml of the checkout."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe '{name}' (choose from {', '.join(available())}, or give a .yaml path)")
    return path


def load_recipe(name: str) -> Recipe:
    path = find_recipe(name)
    raw = load_yaml(path)
    where = str(path)
    for key in ("study", "stages", "tables"):
        if key not in raw:
            raise ConfigError(f"{where}: '{key}' is missing")
    stages = [read_stage(s, f"{where}: stages[{i}]") for i, s in enumerate(expect(raw["stages"], list, where,
                                                                                "stages"))]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{where}: stage names repeat ({', '.join(repeated)})")
    tables = [read_table(t, f"{where}: tables[{i}]", names) for i, t in enumerate(expect(raw["tables"], list, where,
                                                                                       "tables"))]
    figures = expect(raw.get("figures", []), list, where, "figures")
    for i, figure in enumerate(figures):
        expect(figure, dict, where, f"figures[{i}]")
    stand_ins = expect(raw.get("stand_ins", {}), dict, where, "stand_ins")
    scale_variables = expect(raw.get("variables", {}), dict, where, "variables")
    for scale, values in scale_variables.items():
        if scale not in (*SCALES, "every") or not isinstance(values, dict):
            raise ConfigError(f"{where}: variables: expected a mapping per scale ({', '.join(SCALES)}) or for "
                              f"'every' scale, got '{scale}'")
    return Recipe(path.stem, path, raw["study"], raw.get("title", path.stem), raw.get("summary", ""),
                  expect(raw.get("scales", {}), dict, where, "scales"),
                  {k: list(v) for k, v in stand_ins.items()}, stages, tables, figures,
                  {scale: {k: str(v) for k, v in values.items()} for scale, values in scale_variables.items()})


def expect(value, kind, where: str, key: str):
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: '{key}' must be a {'mapping' if kind is dict else kind.__name__}")
    return value


def read_stage(raw, where: str) -> Stage:
    expect(raw, dict, where, "stage")
    known = {"name", "command", "config", "scale", "resume", "scales", "preset", "note"}
    if unknown := sorted(set(raw) - known):
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    name, command = str(raw.get("name", "")), raw.get("command", "")
    if not STAGE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: name '{name}' must be lowercase letters, digits and dashes")
    if command not in COMMANDS:
        raise ConfigError(f"{where} ({name}): unknown command '{command}' (choose from {', '.join(COMMANDS)})")
    scale = expect(raw.get("scale", {}), dict, where, "scale")
    scales = tuple(raw.get("scales", SCALES))
    for s in [*scale, *scales]:
        if s not in SCALES:
            raise ConfigError(f"{where} ({name}): unknown scale '{s}' (choose from {', '.join(SCALES)})")
    return Stage(name, command, expect(raw.get("config", {}), dict, where, "config"), scale,
                 expect(raw.get("resume", {}), dict, where, "resume"), scales, raw.get("preset", ""),
                 raw.get("note", ""))


def read_table(raw, where: str, stage_names: list[str]) -> dict:
    """A table as written, checked: rows as wide as the columns, and every measured value read from a stage."""
    expect(raw, dict, where, "table")
    columns = expect(raw.get("columns", []), list, where, "columns")
    if raw.get("compare", "none") not in COMPARISONS:
        raise ConfigError(f"{where}: compare '{raw['compare']}' (choose from {', '.join(COMPARISONS)})")
    for i, row in enumerate(expect(raw.get("rows", []), list, where, "rows")):
        expect(row, dict, where, f"rows[{i}]")
        for key in ("published", "measured"):
            cells = row.get(key)
            if cells is not None and (not isinstance(cells, list) or len(cells) != len(columns)):
                raise ConfigError(f"{where}, rows[{i}] ({row.get('label')}): '{key}' must list {len(columns)} "
                                  f"cells, one per column")
        for cell in row.get("measured") or []:
            if isinstance(cell, str) and ":" in cell and cell.split("/")[0] not in stage_names:
                raise ConfigError(f"{where}, rows[{i}]: '{cell}' is read from no stage of this recipe (stages: "
                                  f"{', '.join(stage_names)})")
    return raw
