"""Dataclass configs from YAML, with dotted command-line overrides; unknown keys are errors.

    cfg = load_config("configs/tiny.yaml", ["model.fusion.layers=4", "train.lr=3e-4"])
    save_config(cfg, "RUN/config.yaml")  # fully resolved

A file may start from another: a top-level `base: other.yaml` (relative to the file's own folder, or
whatever `resolve_base` makes of it, e.g. a preset name) is read first, recursively, and the file's
own keys are merged on top: mappings key by key, any other value (a list included) replaces. So a
derived file holds only what differs, and an empty mapping in it changes nothing (a command-line
override such as `model.encoders.text.arch={}` does replace). The written config is the resolved
dataclass, with no `base`: a run folder never depends on another file.

Only the builder boundary sees dicts: `from_dict` turns them into the typed dataclasses, recursively,
and rejects keys the dataclass does not have, naming the ones it does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a plain YAML value to the annotated type `tp` (dataclasses, dicts, lists, tuples, optionals)."""
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(value_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "3e-4" as a string
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a dict, recursively; unknown keys raise ValueError."""
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; {cls.__name__} has {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML-friendly values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. model.fusion.layers=4)")
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, as a new dict: mappings merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}  # safe: a `!!python/object` tag is an error, never code
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())
        raise ValueError(f"{path} is not a valid YAML config: {problem}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def _base_file(base: str, folder: Path) -> Path:
    """The default `resolve_base`: a YAML file, relative to the including file's folder."""
    path = folder / base
    if not path.is_file():
        raise ValueError(f"no such file {str(path)!r}")
    return path


def read_config(path: str | Path, resolve_base: Callable[[str, Path], Path] | None = None,
                _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """A YAML config as a dict with its `base:` chain merged under it, and the files read (this one first).

    Args:
        path: the YAML file.
        resolve_base: `(base, folder of the including file) -> Path`; `mmrec.config` passes one that
            also knows the shipped preset names. By default `base` must be a file relative to that folder.
    """
    path = Path(path)
    chain = (*_chain, path.resolve())
    data = _read_yaml(path)
    if "base" not in data:
        return data, [path]
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be a preset name or a path to a YAML file, got {base!r}")
    try:
        base_path = (resolve_base or _base_file)(base, path.parent)
    except ValueError as e:
        raise ValueError(f"{path}: base {base!r}: {e}") from e
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise ValueError(f"config base cycle: {cycle}; a config may not (indirectly) start from itself")
    inherited, files = read_config(base_path, resolve_base, chain)
    return merge(inherited, data), [path, *files]


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None,
                resolve_base: Callable[[str, Path], Path] | None = None) -> T:
    """Read YAML (or start empty) with its `base:` chain, apply overrides, build `cls`."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        data, files = read_config(path, resolve_base)
        # an unknown key may come from any file of the chain: name them all
        where = str(path) if len(files) == 1 else f"{path} (with base {', '.join(str(p) for p in files[1:])})"
    apply_overrides(data, overrides or [])
    return from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
