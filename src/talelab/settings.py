"""How a configuration is declared, checked, layered and saved.

Every command's settings are one dataclass. Its fields are plain values (`option`), nested configs (`section`: a
mapping under its name in YAML, flat flags on the command line) or mappings of another config's fields given for
every run of a sweep (`overrides`). A command's values come in layers, later winning: a named preset, then a YAML
file (`--config`), then flags. `config_values` is the inverse: what `save_config` writes, so that
`talelab <command> --config <dir>/config.yaml` repeats a run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from talelab.atomic import write_text_atomic
from talelab.errors import ConfigError

Layer = tuple[str, dict]  # (where the values come from, for error messages; the values)
CONFIG_FILE = "config.yaml"


def option(default, help: str, choices: tuple | None = None, *, required: bool = False, positional: str = "",
           saved: bool = True, repeat: bool = False):
    """A field that documents itself on the command line. `positional` ('?', '*', '+') takes it without a flag;
    `saved=False` keeps run controls such as --resume out of the saved config; `repeat` makes a list flag that is
    given once per value."""
    metadata = {"help": help, "choices": choices, "required": required, "positional": positional, "saved": saved,
                "repeat": repeat}
    if isinstance(default, list):
        return field(default_factory=partial(list, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls, title: str, prefix: str = "", skip: tuple = (), **defaults):
    """A nested config. Its flags are its field names (after `prefix`, which keeps two sections with a field of the
    same name apart); `skip` leaves fields off the command line; `defaults` are this command's own defaults."""
    return field(default_factory=partial(cls, **defaults),
                 metadata={"section": cls, "help": title, "prefix": prefix, "skip": skip, "defaults": defaults})


def overrides(cls, title: str, skip: tuple = (), prefix: str = ""):
    """Values of `cls`'s fields given for every run (sweeps): only those set, kept as a mapping. `prefix` keeps
    their flags apart from the command's own (a sweep's eval settings: --eval-seed beside --seed)."""
    return field(default_factory=dict, metadata={"overrides": cls, "help": title, "prefix": prefix, "skip": skip,
                                                 "defaults": {}})


class Settings:
    """Base of every config: a value outside its field's choices, or one `check` rejects, fails on construction,
    whichever way the config was built (flags, YAML, a preset or Python)."""

    def __post_init__(self):
        check_choices(self)
        self.check()

    def check(self) -> None:
        """Derived defaults and the checks that involve several fields; subclasses add theirs."""


def check_choices(config) -> None:
    """Reject a value outside a field's `choices`, naming the field."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ConfigError(f"{type(config).__name__}.{f.name}={getattr(config, f.name)!r} is not one of "
                              f"{', '.join(map(str, choices))}")


def check_keys(cls, values: dict[str, Any], where: str) -> None:
    """Reject keys that are not fields of `cls`, naming `where` and the key."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' for {cls.__name__} (known: {', '.join(sorted(known))})")


def flag(name: str) -> str:
    """The command-line spelling of a field name: top_k -> --top-k."""
    return "--" + name.replace("_", "-")


def field_kind(f: dataclasses.Field) -> str:
    """A field's type name as declared ('int', 'list[str]'; an optional's ' | None' dropped): field types are
    strings here (postponed annotations)."""
    return str(f.type).replace(" | None", "")


def nested(f: dataclasses.Field):
    """The config class a section or overrides field holds, or None for a plain value."""
    return f.metadata.get("section") or f.metadata.get("overrides")


@dataclasses.dataclass(frozen=True)
class Flag:
    """A plain field as a command sets it: its section's title, the field, where its value goes ('section.field',
    so that values nest as YAML's do), its name with underscores (a section's prefix first) and its default."""

    title: str
    field: dataclasses.Field
    destination: str
    name: str
    default: Any


def flags_of(cls, title: str = "settings", path: str = "", prefix: str = "", skip: tuple = (),
             defaults: dict | None = None) -> Iterator[Flag]:
    """Every plain field of `cls`, sections walked: a section's fields are flags of the same command (after its
    prefix). The command line (talelab.cli) and the Python API's keywords (talelab.api) are both this list."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if nested(f):
            meta = f.metadata
            yield from flags_of(nested(f), meta["help"], f"{path}{f.name}.", prefix + meta["prefix"], meta["skip"],
                                meta["defaults"])
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield Flag(title, f, path + f.name, prefix + f.name, (defaults or {}).get(f.name, default))


# How a value from YAML or a grid becomes a field's type (field types are strings: postponed annotations)
VALUE_CASTS = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}


def typed(f: dataclasses.Field, value, where: str):
    """`value` as field `f`'s type, or a ConfigError naming `where` and the field. YAML reads 1e-3 as a string and 3
    as an int, so numbers in strings convert and ints widen to floats; nothing else is guessed."""
    kind = field_kind(f)
    if value is None or kind not in ("int", "float", "bool", "str", "list[int]", "list[str]"):
        return value
    if kind.startswith("list["):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{f.name}' must be a list, got {value!r}")
        return [typed_scalar(kind[5:-1], f.name, v, where) for v in value]
    return typed_scalar(kind, f.name, value, where)


def typed_scalar(kind: str, name: str, value, where: str):
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in ("int", "float") and isinstance(value, str):
        try:
            return VALUE_CASTS[kind](value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: '{name}' must be {'an' if kind == 'int' else 'a'} {kind}, got {value!r}")


def grid_axis(flag: str, key: str, values: list[str], kind) -> list[tuple[str, Any]]:
    """One axis of a command-line grid, (key, value) per non-empty value typed as `kind` (a field type name or a
    callable); a value that does not convert is a ConfigError naming the flag and the key. Sweeps, trials and
    decoding sweeps share it."""
    cast = VALUE_CASTS.get(kind, str) if isinstance(kind, str) else kind
    try:
        return [(key, cast(v)) for v in values if v]
    except ValueError:
        name = kind if isinstance(kind, str) else kind.__name__
        raise ConfigError(f"{flag}: values of '{key}' must be {name}s, got '{','.join(values)}'") from None


def checked_layer(cls, values, where: str) -> dict:
    """A copy of one layer's values with every key known and every value typed; sections checked inside."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys")
    check_keys(cls, values, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for name, value in values.items():
        inner = nested(fields[name])
        out[name] = (checked_layer(inner, value, f"{where}, section '{name}'") if inner
                     else typed(fields[name], value, f"{where}"))
    return out


def merge(into: dict, values: dict) -> dict:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def build(cls, values: dict):
    """`cls` from merged values: sections from their command defaults updated by the values, overrides as given."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            kwargs[f.name] = build(f.metadata["section"], {**f.metadata["defaults"], **values.get(f.name, {})})
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def missing_required(cls, values: dict, prefix: str = "") -> list[str]:
    """Flags of required fields no layer set."""
    missing = []
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            missing += missing_required(f.metadata["section"], values.get(f.name, {}), prefix + f.metadata["prefix"])
        elif f.metadata.get("required") and values.get(f.name) in (None, "", []):
            missing.append(f.name if f.metadata.get("positional") else flag(prefix + f.name))
    return missing


def resolve(cls, layers: list[Layer], command: str = ""):
    """One config from layers (earliest first, later winning), each checked and named in errors."""
    values: dict = {}
    for where, layer in layers:
        merge(values, checked_layer(cls, layer, where))
    missing = missing_required(cls, values)
    if missing:
        raise ConfigError(f"{command or cls.__name__}: {missing[0]} is required (as a flag or in --config)")
    return build(cls, values)


def preset_layer(table: dict[str, dict], name: str, what: str = "preset") -> Layer:
    """The one way a named preset is looked up, for every command that has them."""
    if name not in table:
        raise ConfigError(f"unknown {what} '{name}' (choose from {', '.join(table)})")
    return (f"{what} '{name}'", table[name])


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; a one-line error when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return values


def config_values(config) -> dict:
    """The saved form of a config: every field but run controls, sections as mappings."""
    values = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("saved", True):
            value = getattr(config, f.name)
            values[f.name] = config_values(value) if dataclasses.is_dataclass(value) else value
    return values


def save_config(config, directory: str | Path) -> Path:
    """Write `directory`/config.yaml, which `--config` reads back into the same config."""
    path = Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_values(config), sort_keys=False, allow_unicode=True))
    return path


def require(where: str, checks: list[tuple[bool, str]]) -> None:
    """Raise a ConfigError for the first failed (ok, message) check, naming the config."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
