"""Loading and writing: layers (`intro_lite.toml` defaults -> the recipe -> `--set key=value`, later
wins), every key checked against the schema, values coerced to their annotation, then validated.
An unknown key or a wrong type is a one-line `ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from intro_lite.config.schema import config_class
from intro_lite.config.validate import validate
from intro_lite.errors import ConfigError

if TYPE_CHECKING:
    from intro_lite.config.schema import Config

# The project defaults live at the repository's top level (see config/schema.py).
DEFAULTS_FILE = Path(__file__).resolve().parent.parent.parent / "intro_lite.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # an editor's byte-order mark is not TOML's business
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (["train", "lr"], 3e-5). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # e.g. --set model.name_or_path=Qwen/Qwen2.5-1.5B
    return key.split("."), value


def _nested(path: list[str], value: Any) -> dict:
    d: Any = value
    for part in reversed(path):
        d = {part: d}
    return d


def load_config(recipe: str | Path | None = None, overrides: list[str] = (), defaults: Path = DEFAULTS_FILE):
    """The run config (a `config_class()` instance) from the layers, checked and validated."""
    layers: list[tuple[str, dict]] = [(str(defaults), _read_toml(defaults))] if defaults.is_file() else []
    if recipe is not None:
        layers.append((str(recipe), _read_toml(Path(recipe))))
    for text in overrides:
        path, value = parse_override(text)
        layers.append((f"--set {text}", _nested(path, value)))
    Config = config_class(_user_objective(layers))
    merged: dict = {}
    for source, layer in layers:
        _check_keys(Config, layer, source, prefix="")
        merged = _merge(merged, layer)
    cfg = _build(Config, merged, "config", prefix="")
    _expand_home(cfg)
    validate(cfg)
    return cfg


def _expand_home(cfg) -> None:
    """`~/...` in a path key means the home directory, as in a shell (not a directory named `~`)."""
    def expand(value: str) -> str:
        return str(Path(value).expanduser()) if value.startswith("~") else value

    cfg.output_dir = expand(cfg.output_dir)
    cfg.model.name_or_path = expand(cfg.model.name_or_path)
    cfg.lora.init_adapter = expand(cfg.lora.init_adapter)
    cfg.data.source = [expand(s) for s in cfg.data.source] if isinstance(cfg.data.source, list) else expand(cfg.data.source)
    cfg.data.exclude_ids_from = expand(cfg.data.exclude_ids_from)
    cfg.eval.source = expand(cfg.eval.source)


def _user_objective(layers: list[tuple[str, dict]]) -> str:
    """The user objective (`file.py:Name`) the layers choose, imported and registered so that its table
    is a known key; "" when the objective is a built-in one (checked by `validate`)."""
    from intro_lite.objectives.base import get_objective, is_user_objective

    source, name = "", ""
    for where, layer in layers:
        if "objective" in layer:
            source, name = where, layer["objective"]
    if not (isinstance(name, str) and is_user_objective(name)):
        return ""
    try:
        get_objective(name)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return name


def _check_keys(cls: type, data: dict, source: str, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known here: {known})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' must be a table")
            _check_keys(hints[key], value, source, prefix=f"{prefix}{key}.")


def _build(cls: type, data: dict, source: str, prefix: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, key = hints[f.name], data[f.name], f"{prefix}{f.name}"
        kwargs[f.name] = _build(tp, value, source, key + ".") if dataclasses.is_dataclass(tp) else _coerce(tp, value, key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation; int -> float is the only silent widening."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"'{key}' must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arm in get_args(tp):
            try:
                return _coerce(arm, value, key)
            except ConfigError as e:
                errors.append(str(e).split(" must be ", 1)[-1])
        raise ConfigError(f"'{key}' must be {' or '.join(errors)}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


# ---------------------------------------------------------------------------------------------
# Writing the resolved config


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def toml_literal(v: Any) -> str:
    """A TOML value literal for str/int/float/bool/lists (also the right-hand side of `--set`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(cfg: Config) -> str:
    """Render the resolved config as TOML (flat tables; values are str/int/float/bool/lists)."""
    lit = toml_literal
    d = to_dict(cfg)
    top = [f"{k} = {lit(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {lit(vv)}" for kk, vv in v.items()) for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"
