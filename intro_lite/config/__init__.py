"""Typed, validated, layered configuration: `schema` (the dataclasses and their defaults), `load`
(layering, `--set`, TOML in and out), `validate` (range checks), `sources` (what a source name means).
What callers use is re-exported here."""

from intro_lite.config.load import DEFAULTS_FILE, load_config, parse_override, to_dict, to_toml, toml_literal
from intro_lite.config.schema import Config, CoreConfig, DataConfig, EvalConfig, LoraConfig, ModelConfig, RolloutConfig, TrainConfig
from intro_lite.objectives import (DrGrpoConfig, GrpoConfig, IapoConfig, IntroConfig, LatroConfig, RaftPPConfig,
                                   ReinforceRejConfig, ReproConfig)
from intro_lite.config.sources import is_tiny
from intro_lite.config.validate import validate
from intro_lite.errors import ConfigError

__all__ = [
    "DEFAULTS_FILE", "load_config", "parse_override", "to_dict", "to_toml", "toml_literal", "validate", "is_tiny",
    "ConfigError", "Config", "CoreConfig", "ModelConfig", "LoraConfig", "DataConfig", "RolloutConfig", "TrainConfig", "EvalConfig",
    "IntroConfig", "GrpoConfig", "DrGrpoConfig", "RaftPPConfig", "ReinforceRejConfig", "LatroConfig", "IapoConfig",
    "ReproConfig",
]
