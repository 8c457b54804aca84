"""Typed, validated, layered configuration: `schema` (the dataclasses and their defaults), `load`
(layering, `--set`, TOML in and out), `validate` (range checks), `sources` (what a source name means).
What callers use is re-exported here. Importing this package does not import torch: `Config` (which
holds the objectives' tables) is made when first used."""

from intro_lite.config.load import DEFAULTS_FILE, load_config, parse_override, to_dict, to_toml, toml_literal
from intro_lite.config.schema import CoreConfig, DataConfig, EvalConfig, LoraConfig, ModelConfig, RolloutConfig, TrainConfig, config_class
from intro_lite.config.sources import is_tiny
from intro_lite.config.validate import validate
from intro_lite.errors import ConfigError

__all__ = [
    "DEFAULTS_FILE", "load_config", "parse_override", "to_dict", "to_toml", "toml_literal", "validate", "is_tiny",
    "ConfigError", "Config", "config_class", "CoreConfig", "ModelConfig", "LoraConfig", "DataConfig", "RolloutConfig",
    "TrainConfig", "EvalConfig",
]


def __getattr__(name: str):
    if name == "Config":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
