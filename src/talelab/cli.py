"""The `talelab` command: finds the command in talelab.commands' table, builds its flags from its config dataclass,
layers preset < YAML (--config) < flags, runs it and saves the resolved config.yaml beside what it wrote."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from talelab.commands import COMMANDS, Command
from talelab.errors import ConfigError, TalelabError
from talelab.settings import VALUE_CASTS, field_kind, flag, flags_of, load_yaml, preset_layer, resolve, save_config

PROG = "talelab"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other talelab error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_field(group, f: dataclasses.Field, dest: str, name: str, default) -> None:
    """One flag (or positional) for a plain field. Unset flags stay absent so that presets and YAML win."""
    meta = f.metadata
    help_text = f"{meta.get('help', '')} (default: {default})".replace("%", "%%")  # argparse %-formats help
    kind = field_kind(f)
    if kind == "bool":
        group.add_argument(flag(name), dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        return
    item = kind[5:-1] if kind.startswith("list[") else kind
    shape = {"type": VALUE_CASTS.get(item, str), "choices": meta.get("choices"), "default": argparse.SUPPRESS,
             "help": help_text}
    if meta.get("positional"):  # argparse would check a missing one's SUPPRESS default against the choices
        group.add_argument(dest, nargs=meta["positional"], metavar=name.upper(), **{**shape, "choices": None})
    elif kind.startswith("list["):
        group.add_argument(flag(name), dest=dest, metavar=item.upper(),
                           **({"action": "append"} if meta.get("repeat") else {"nargs": "+"}), **shape)
    else:
        group.add_argument(flag(name), dest=dest, metavar=item.upper(), **shape)


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """Flags for every field of `cls`, a group per section; a section's fields are flags of the same command (after
    its prefix), their destination 'section.field' so that the values nest again as YAML's do."""
    groups = {"settings": parser.add_argument_group("settings")}  # the command's own fields first, as they read
    for flag_ in flags_of(cls):
        if field_kind(flag_.field) == "list[dict]":  # a list of mappings (trials') is written in YAML only
            continue
        if flag_.title not in groups:
            groups[flag_.title] = parser.add_argument_group(flag_.title)
        add_field(groups[flag_.title], flag_.field, flag_.destination, flag_.name, flag_.default)


def command_parser(name: str, command: Command) -> Parser:
    parser = Parser(prog=f"{PROG} {name}", description=command.help)
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="settings from a YAML file (the layout "
                        "of the config.yaml this command saves beside its output); flags win over it")
    if command.presets:
        parser.add_argument("--preset", default=None, choices=list(command.presets), help="named starting values, "
                            "under --config and flags")
    add_flags(parser, command.config)
    return parser


def given_values(args: argparse.Namespace) -> dict:
    """The flags given, nested by section ('sampling.top_k' -> {'sampling': {'top_k': ...}})."""
    values: dict = {}
    for dest, value in vars(args).items():
        if dest in ("config", "preset") or value == []:  # an empty '*' positional says nothing
            continue
        *sections, key = dest.split(".")
        target = values
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return values


def resolve_command(name: str, command: Command, args: argparse.Namespace):
    """preset < YAML < flags (train's --resume alone starts from the run's saved configuration instead)."""
    given, preset = given_values(args), getattr(args, "preset", None)  # only commands with presets have --preset
    layers = []
    if command.base and not preset and not args.config and (base := command.base(given)):
        layers.append(base)
    if preset:
        where, values = preset_layer(command.presets, preset)
        layers.append((where, {command.preset_section: values} if command.preset_section else values))
    if args.config:
        layers.append((args.config, load_yaml(args.config)))
    layers.append(("command line", given))
    return resolve(command.config, layers, f"{PROG} {name}")


def split_command(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(--data-root, the command's name, its arguments); no name for `talelab` alone or `talelab --help`. A name is
    one word or two ('tokenizer train'); the longest that the table knows wins, so `eval loss` is a command and
    `eval MODEL` the eval command."""
    data_root, rest = None, list(argv)
    while rest and rest[0].startswith("--data-root"):
        option = rest.pop(0)
        data_root = option.partition("=")[2] if "=" in option else (rest.pop(0) if rest else None)
    if not rest or rest[0] in ("-h", "--help"):
        return data_root, None, []
    two = " ".join(rest[:2])
    if two in COMMANDS:
        return data_root, two, rest[2:]
    if rest[0] in COMMANDS:
        return data_root, rest[0], rest[1:]
    group = [n for n in COMMANDS if n.startswith(rest[0] + " ")]
    known = ", ".join(group or COMMANDS)
    raise ConfigError(f"{PROG}: unknown command '{' '.join(rest[:2 if group else 1])}' (choose from {known})")


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items())
    return (f"usage: {PROG} [--data-root DIR] COMMAND [--config FILE.yaml] [flags]\n\nBuild a small story-writing "
            f"language model end to end.\n\n--data-root DIR: folder with the shared data layout (default: "
            f"$TALELAB_DATA, then ../shared beside the checkout, then the Hugging Face hub)\n\ncommands:\n{rows}\n\n"
            f"`{PROG} COMMAND --help` lists a command's flags.")


def run(argv: list[str]) -> int:
    data_root, name, rest = split_command(argv)
    if name is None:  # the table of commands; asked for, or in place of a missing command (a usage error)
        print(usage())
        return 0 if argv else 2
    command = COMMANDS[name]
    try:
        args = command_parser(name, command).parse_args(rest)
    except SystemExit as e:  # --help and usage errors: argparse has printed its message
        return int(e.code or 0)
    config = resolve_command(name, command, args)
    out = command.run(config, data_root)
    if out is not None:
        save_config(config, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except TalelabError as e:
        print(f"talelab: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # before OSError, its base class: output piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # disk full, permissions: the user's to fix, not a bug to trace
        print(f"talelab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("talelab: interrupted; outputs are published only when complete, so the last one written (checkpoint, "
              "prepared corpus, report) is intact", file=sys.stderr)
        return 130
