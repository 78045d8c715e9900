"""Frozen config dataclasses, one per stage method (defaults = the papers' values), and recipe loading.

A config field is declared once and serves three places: the CLI option (``fg_threshold`` -> ``--fg-threshold``,
help from ``metadata['help']``), YAML recipes (unknown keys are errors naming the key) and ``stage.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


def option(default, help: str, choices: tuple | None = None):
    """A config field with its CLI help (and allowed values)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults in frozen configs")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ThresholdConfig:
    """Otsu / fixed-threshold seeds (see :mod:`wsss.seeds.threshold` for the rules)."""

    threshold: typing.Optional[float] = option(None, "fixed grey-level threshold 0..255 (default: Otsu)")
    polarity: str = option("auto", "which side is foreground: auto (the side that covers less of the image "
                                   "border), bright or dark", ("auto", "bright", "dark"))
    blur_sigma: float = option(1.0, "Gaussian blur sigma (pixels) before thresholding; 0 = none")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_hash(*parts) -> str:
    """A short stable hash of JSON-able parts (config dicts, input paths)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _coerce(name: str, value, annotation):
    """Convert a YAML/CLI value to the field's type, or raise ConfigError naming the key."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            elem = args[0] if args else str
            return tuple(elem(x) for x in items)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def build_config(cls, values: dict | None = None, *, where: str = "config"):
    """Make ``cls`` from ``values``; unknown keys and values outside the field's choices are errors."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        value = _coerce(name, value, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where}: key {name!r} = {value!r}; choose one of {', '.join(map(str, choices))}")
        kwargs[name] = value
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file with ``yaml.safe_load`` (no arbitrary objects)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys to values")
    return data
