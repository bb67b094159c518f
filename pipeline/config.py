"""One config system for every job: YAML with inheritance, dotted overrides, typed dataclasses.

A YAML file may name a base file with the top-level key ``base`` (a path relative to the
file, or a list of paths merged left to right); the file's own keys are merged over it.
Command-line overrides are ``key.sub=value`` pairs whose values are parsed as YAML scalars
(``yaml.safe_load``), so ``lr=2e-5`` is a float and ``views=[PA,AP]`` a list.

The merged mapping is loaded into a dataclass schema. An unknown key, a value of the wrong
type, or a required field without a value raises :class:`ConfigError` naming the dotted key
and the file (or ``command line``) it came from. Defaults live in the YAML files under
``configs/``; schema fields are typed and carry no defaults unless they are optional.

A section may name a preset with the key ``preset`` (``loss.preset=sista``): after the overrides,
``configs/<section>/<preset>.yaml`` (or the YAML file the value names) is merged under that
section, so the section's own keys win over the preset's.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.resources import config_root, locate

T = TypeVar("T")

BASE_KEY = "base"
PRESET_KEY = "preset"
COMMAND_LINE = "command line"


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``2e-5`` / ``1E6`` as floats (YAML 1.1 wants a dot)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML text without constructing arbitrary objects (safe loader, floats like ``2e-5``)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader derives from SafeLoader


class ConfigError(ValueError):
    """A config problem; the message names the key and where its value came from."""


def require(checks: Sequence[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first failed ``(ok, message)`` check (schema ``__post_init__``)."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def require_in_range(section: str, cfg: object, checks: Mapping[str, bool]) -> None:
    """Raise ValueError naming every key of ``cfg`` whose check failed: ``section: out of range: key=value, ...``."""
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"{section}: out of range: {', '.join(f'{key}={getattr(cfg, key)!r}' for key in bad)}")


# --------------------------------------------------------------------------- YAML + merging


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping with ``yaml.safe_load``; an empty file is an empty mapping."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(
    dst: dict[str, Any], src: Mapping[str, Any], origins: dict[str, str], origin: str, prefix: str = ""
) -> None:
    """Deep-merge ``src`` into ``dst`` in place, recording for every leaf key where it came from."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: key {prefix}{key!r} must be a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, origin, dotted + ".")
        else:
            # A replaced subtree forgets the origins of its old leaves.
            for old in [k for k in origins if k.startswith(dotted + ".")]:
                del origins[old]
            dst[key] = _copy_tree(value)
            origins[dotted] = origin
            if isinstance(value, Mapping):
                _record_origins(value, origins, origin, dotted + ".")


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """A copy of ``base`` with ``extra`` deep-merged in (``origin`` names ``extra`` in errors)."""
    merged = _copy_tree(base)
    _merge(merged, extra, {}, origin)
    return merged


def _copy_tree(value: Any) -> Any:
    """A deep copy of plain YAML data (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _record_origins(tree: Mapping[str, Any], origins: dict[str, str], origin: str, prefix: str) -> None:
    """Record ``origin`` for every key below ``prefix``."""
    for key, value in tree.items():
        origins[f"{prefix}{key}"] = origin
        if isinstance(value, Mapping):
            _record_origins(value, origins, origin, f"{prefix}{key}.")


def load_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a YAML config and its ``base`` chain; return the merged mapping and each key's origin file."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: circular '{BASE_KEY}' chain: {chain}")
    data = _read_yaml(path)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    bases = data.pop(BASE_KEY, None)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: key '{BASE_KEY}' must be a path or a list of paths")
        for base in bases:
            base_tree, base_origins = load_yaml_tree(path.parent / base, (*_seen, path))
            _merge(merged, base_tree, origins, "?")
            origins.update(base_origins)
    _merge(merged, data, origins, str(path))
    return merged, origins


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"{COMMAND_LINE}: override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{COMMAND_LINE}: override {text!r} has an empty key")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{COMMAND_LINE}: override {key}: value {raw!r} is not valid YAML: {err}") from err
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], origins: dict[str, str], overrides: Sequence[str]) -> None:
    """Apply dotted ``key=value`` overrides to ``tree`` in place."""
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _merge(tree, nested, origins, COMMAND_LINE)


def presets(section: str) -> list[str]:
    """The preset names of a config section: the YAML files of ``configs/<section>/``."""
    return sorted(p.stem for p in (config_root() / section).glob("*.yaml"))


def preset_file(section: str, name: str, origin: str) -> Path:
    """The file a ``<section>.preset`` value names: ``configs/<section>/<name>.yaml``, or a YAML path."""
    if name.endswith((".yaml", ".yml")):
        path = locate(name)
    else:
        path = config_root() / section / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{origin}: key '{section}.{PRESET_KEY}': {name!r} is not a preset "
                          f"(known: {', '.join(presets(section)) or 'none'}; or a path to a .yaml file)")
    return path


def apply_presets(tree: dict[str, Any], origins: dict[str, str]) -> None:
    """Merge each section's ``preset`` file under the section, in place (the section's keys win)."""
    for section, value in tree.items():
        if not isinstance(value, dict) or value.get(PRESET_KEY) is None:
            continue
        name, key = value[PRESET_KEY], f"{section}.{PRESET_KEY}"
        if not isinstance(name, str):
            raise ConfigError(f"{_origin_of(key, origins)}: key '{key}': expected a preset name, got {name!r}")
        path = preset_file(section, name, _origin_of(key, origins))
        preset, preset_origins = load_yaml_tree(path)
        if PRESET_KEY in preset:
            raise ConfigError(f"{path}: a preset file cannot name another '{PRESET_KEY}'")
        own = {k: v for k, v in origins.items() if k.startswith(section + ".")}
        merged: dict[str, Any] = {}
        scratch: dict[str, str] = {}
        _merge(merged, preset, scratch, str(path))
        _merge(merged, value, scratch, COMMAND_LINE)
        tree[section] = merged
        for k in own:
            del origins[k]
        origins.update({f"{section}.{k}": v for k, v in preset_origins.items() if f"{section}.{k}" not in own})
        origins.update(own)


# --------------------------------------------------------------------------- typed loading


def _origin_of(key: str, origins: Mapping[str, str]) -> str:
    """The file (or command line) that set ``key`` or its closest parent."""
    probe = re.sub(r"\[\d+\]", "", key)
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


def _type_name(tp: Any) -> str:
    """A readable name for a type annotation."""
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, origins: Mapping[str, str]) -> Any:
    """Check ``value`` against annotation ``tp`` and build nested dataclasses."""
    where = _origin_of(key, origins)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origins)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: key '{key}': {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: key '{key}': {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, origins, key + ".")
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]", origins) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", origins) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if args else Any
        return {k: _convert(v, val_tp, f"{key}.{k}", origins) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}': expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}': expected a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: key '{key}': unsupported annotation {_type_name(tp)} in schema")


def _build(schema: type[T], tree: Mapping[str, Any], origins: Mapping[str, str], prefix: str = "") -> T:
    """Build dataclass ``schema`` from a mapping, checking keys, types and required fields."""
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in tree:
        if key not in fields:
            dotted = f"{prefix}{key}"
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{_origin_of(dotted, origins)}: unknown key '{dotted}' (known here: {known})")
    kwargs = {}
    for name, field in fields.items():
        dotted = f"{prefix}{name}"
        if name in tree:
            kwargs[name] = _convert(tree[name], hints[name], dotted, origins)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            tp = hints[name]
            if dataclasses.is_dataclass(tp):
                kwargs[name] = _convert({}, tp, dotted, origins)
            else:
                raise ConfigError(
                    f"{_origin_of(prefix.rstrip('.'), origins)}: missing required key '{dotted}'"
                )
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{_origin_of(prefix.rstrip('.'), origins)}: {prefix.rstrip('.') or 'config'}: {err}") from err


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (with its ``base`` chain) plus dotted ``overrides`` into dataclass ``schema``."""
    tree, origins = load_yaml_tree(locate(path)) if path is not None else ({}, {})
    apply_overrides(tree, origins, overrides)
    apply_presets(tree, origins)
    return _build(schema, tree, origins)


def config_from_dict(schema: type[T], tree: Mapping[str, Any], origin: str = "dict", section: str | None = None) -> T:
    """Build ``schema`` from an in-memory mapping (e.g. a saved ``config.yaml`` already parsed).

    ``section`` names the config section ``tree`` is (e.g. ``loss``), so that its ``preset`` resolves.
    """
    origins: dict[str, str] = {}
    whole = {section: _copy_tree(tree)} if section else _copy_tree(tree)
    _record_origins(whole, origins, origin, "")
    apply_presets(whole, origins)
    if section:
        return _build(schema, whole[section], origins, section + ".")
    return _build(schema, whole, origins)


# --------------------------------------------------------------------------- output


def to_dict(cfg: Any) -> Any:
    """A plain-data (YAML-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg), encoding="utf-8")
    return path


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to ``{"a.b.c": value}`` (e.g. for MLflow params)."""
    data = to_dict(cfg)
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(value, Mapping) and value:
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------- command line


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """Add ``--config``, ``--print-config`` and positional ``key=value`` overrides to a parser."""
    parser.add_argument(
        "--config",
        default=default_config,
        required=default_config is None,
        help="YAML config file (may name a 'base' file)" + (f"; default {default_config}" if default_config else ""),
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (YAML scalars)")


def config_from_args(schema: type[T], args: argparse.Namespace) -> T:
    """Resolve the config named by parsed arguments; print it and exit when ``--print-config``."""
    try:
        cfg = load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    if args.print_config:
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


__all__ = [
    "ConfigError",
    "add_config_arguments",
    "apply_overrides",
    "apply_presets",
    "config_from_args",
    "config_from_dict",
    "deep_merge",
    "flatten",
    "load_config",
    "load_yaml_tree",
    "parse_override",
    "preset_file",
    "presets",
    "require",
    "safe_load",
    "save_config",
    "to_dict",
    "to_yaml",
]

