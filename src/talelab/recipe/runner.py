"""`talelab recipe run`: a recipe's stages in order, each one talelab command in its own process, then the report.

Each stage's config is written to <out>/stages/<stage>.yaml and run as `talelab COMMAND --config` that file, exactly
as a person would run it (its output, progress bars included, goes to the terminal). A stage that finished leaves
<out>/stages/<stage>.done.json with a hash of its config and its wall time, and is skipped on the next run while its
config is unchanged; a stage that was interrupted runs again with the recipe's `resume` values (commands that
resume, like train and finetune, continue from their last checkpoint; the others start over). A dry run checks every
stage's config against its command (keys, types, choices, required values) and prints the commands without running
them: what CI does for the `full` scale, whose models and data need a GPU and the Hub.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from string import Template

import yaml

from talelab import paths
from talelab.atomic import write_text_atomic
from talelab.cli import resolve_command
from talelab.commands import COMMANDS
from talelab.errors import TalelabError
from talelab.recipe.book import Recipe, Stage, substitute
from talelab.recipe.report import write_report


class StageFailed(TalelabError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def variables(recipe: Recipe, scale: str, out: Path, data_root) -> dict[str, str]:
    """What ${name} stands for in the recipe at this scale: its own variables (which may name the fixed ones, e.g.
    `base: ${out}/base`), then the fixed ones: out, data, recipe, scale."""
    root = paths.data_root(data_root)
    fixed = {"out": str(out), "data": str(root) if root else "", "recipe": str(recipe.path.parent.resolve()),
             "scale": scale}
    own = {**recipe.variables.get("every", {}), **recipe.variables.get(scale, {})}
    return {**{name: Template(value).safe_substitute(fixed) for name, value in own.items()}, **fixed}


def stage_text(values: dict) -> str:
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def config_digest(values: dict) -> str:
    """What a done marker remembers of a stage's config: the hash of the YAML it was run from."""
    return hashlib.sha256(stage_text(values).encode()).hexdigest()


def stage_file(out: Path, name: str, values: dict) -> Path:
    """Write a stage's config, OUT/stages/NAME.yaml, where the stage reads it."""
    text = stage_text(values)
    path = out / "stages" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    return path


def command_line(stage: Stage, config_path: Path, data_root) -> list[str]:
    root = ["--data-root", str(data_root)] if data_root else []
    preset = ["--preset", stage.preset] if stage.preset else []
    return [sys.executable, "-m", "talelab", *root, *stage.command.split(), "--config", str(config_path), *preset]


def check_stage(stage: Stage, config_path: Path) -> None:
    """Resolve the stage's config as its command will: a wrong key, type or choice fails here, naming the file."""
    command = COMMANDS[stage.command]
    resolve_command(stage.command, command, argparse.Namespace(config=str(config_path), preset=stage.preset or None))


def run_recipe(recipe: Recipe, scale: str, out: str | os.PathLike, data_root=None, dry_run: bool = False,
               stages: list[str] | None = None) -> Path:
    """Run (or with dry_run only check) the recipe's stages at `scale` into `out`; returns report.md's path (None for
    a dry run). `stages` limits the run to those names (each still skipped when done)."""
    out = Path(out)
    chosen = [s for s in recipe.stages_at(scale) if not stages or s.name in stages]
    print(f"recipe {recipe.name} ({recipe.title}), scale {scale}: {recipe.scales.get(scale, '')}")
    for stand_in in recipe.stand_ins.get(scale, []):
        print(f"  stand-in: {stand_in}")
    names = variables(recipe, scale, out, data_root)
    # Every stage's config hash in recipe order, chosen or not: a stage whose inputs an earlier stage rewrote since
    # it finished runs again (data flows one way, so what came before is what it may read).
    digests = {s.name: config_digest(s.values(scale, names)) for s in recipe.stages_at(scale)}
    for number, stage in enumerate(chosen, 1):
        values = stage.values(scale, names)
        config_path = stage_file(out, stage.name, values)
        check_stage(stage, config_path)
        line = shlex.join(["talelab", *command_line(stage, config_path, data_root)[3:]])
        print(f"\n== stage {number}/{len(chosen)} {stage.name}: {stage.note or stage.command}\n$ {line}", flush=True)
        if dry_run:
            continue
        upstream = dict(itertools.takewhile(lambda item: item[0] != stage.name, digests.items()))
        run_stage(stage, out, values, config_path, digests[stage.name], upstream, data_root, names)
    if dry_run:
        print(f"\ndry run: {len(chosen)} stage configs checked (written to {out / 'stages'})")
        return None
    report = write_report(recipe, scale, out, names)
    print(f"\nreport: {report}")
    return report


def run_stage(stage: Stage, out: Path, values: dict, config_path: Path, digest: str, upstream: dict[str, str],
              data_root, names: dict) -> None:
    """Run one stage unless it finished with this config (`digest`) when the stages before it had theirs
    (`upstream`, by name)."""
    done_path = out / "stages" / f"{stage.name}.done.json"
    started_path = out / "stages" / f"{stage.name}.started"
    if done_path.exists():
        done = json.loads(done_path.read_text(encoding="utf-8"))
        if done.get("config_sha256") != digest:
            print("(its config changed since it finished: running it again)")
        elif done.get("upstream", upstream) != upstream:  # (markers written before upstream was recorded: kept)
            print("(an earlier stage's config changed since it finished: running it again)")
        else:
            print(f"(finished earlier in {done['seconds']:.0f} s: skipped)")
            return
        done_path.unlink()
    elif started_path.exists() and stage.resume:
        print("(interrupted earlier: resuming)")
        resume = substitute(stage.resume, names, f"stage '{stage.name}'")
        config_path = stage_file(out, f"{stage.name}.resume", {**values, **resume})
    write_text_atomic(started_path, time.strftime("%Y-%m-%d %H:%M:%S\n"))
    began = time.monotonic()
    code = subprocess.call(command_line(stage, config_path, data_root))
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise StageFailed(f"stage '{stage.name}' (talelab {stage.command} --config {config_path}) failed with exit "
                          f"{code}; finished stages are kept: run the recipe again after fixing it", code)
    seconds = time.monotonic() - began
    write_text_atomic(done_path, json.dumps({"config_sha256": digest, "seconds": round(seconds, 1),
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "upstream": upstream},
                                            indent=2) + "\n")
    started_path.unlink(missing_ok=True)
