"""Typed configuration: YAML files + `--section.key=value` overrides -> nested dataclasses.

Each component declares its own dataclass section; a run's config composes sections. Loading
validates every key and type and names the offending key on failure. `_base_: other.yaml` at the top
of a YAML file merges that file first (paths relative to the including file).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write

T = TypeVar("T")


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file, then apply `--a.b=value` overrides."""
    raw: dict[str, Any] = read_yaml(path) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(cls, raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping naming the same key twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); keep only one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving `_base_` includes (a cycle or a duplicate key is a one-line error)."""
    path = Path(path)
    if not path.is_file():
        named = f"_base_ in {_chain[-1]}" if _chain else "--config"
        raise MmrepError(f"config file not found: {path} (check the path passed to {named})")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise MmrepError(f"config file {path}: _base_ includes form a cycle ({cycle}); remove one _base_")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None)
        detail = problem if problem and "duplicate key" in problem else str(e).splitlines()[0]
        raise MmrepError(f"config file {path} is not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise MmrepError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise MmrepError(f"config file {path}: _base_ must be one file path (relative to {path.parent}), got {base!r}")
    merged = read_yaml(path.parent / base, (*_chain, path.resolve()))
    deep_merge(merged, data)
    return merged


def deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `other` into `into` (mappings merge, everything else replaces)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def parse_override(item: str) -> tuple[str, Any]:
    """`--train.lr=1e-3` -> ("train.lr", 0.001). Values are parsed as YAML scalars/lists."""
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        if item.startswith("--") and text and " " not in text:  # a bare flag (`--loss.filtering`, W&B agents)
            return text.strip(), True
        raise MmrepError(f"override '{item}' must look like --section.key=value")
    key, value = text.split("=", 1)
    if value == "None":  # W&B agents print Python values: None, True, [1, 2], {'a': 1} (the rest is YAML)
        return key.strip(), None
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MmrepError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping, validating keys and types recursively."""
    if not isinstance(data, dict):
        raise MmrepError(f"config section '{where or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise MmrepError(f"unknown config key '{name}' (valid keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise MmrepError(f"config section '{where or cls.__name__}': {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except MmrepError as e:
                errors.append(str(e))
        raise MmrepError(errors[0] if errors else f"config key '{key}' has a wrong type")
    if origin is Literal:
        if value not in args:
            raise MmrepError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MmrepError(f"config key '{key}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise MmrepError(f"config key '{key}' must be a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MmrepError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MmrepError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise MmrepError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MmrepError(f"config key '{key}' must be a string, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def save_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config next to a run's outputs (atomically)."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path


def split_config_args(argv: Sequence[str], top_level: Sequence[str] = ()) -> tuple[str | None, list[str], list[str]]:
    """Separate `--config PATH` and `--a.b=v` overrides from the remaining arguments.

    `top_level` names undotted keys (`--output_dir=x`) that are overrides too.
    """
    config, overrides, rest = None, [], []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise MmrepError("--config needs a path")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--") and ("." in arg.split("=", 1)[0] or arg[2:].split("=", 1)[0] in top_level):
            overrides.append(arg)  # `--a.b=v`, or a bare boolean flag `--a.b` (= true)
        else:
            rest.append(arg)
    return config, overrides, rest
