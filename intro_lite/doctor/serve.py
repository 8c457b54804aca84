"""Can this machine run the recipe at all? The GPU it expects, the model's weights, its training data.

Each is a check row; what is missing also becomes one line of the doctor's closing error (exit 2), with
what would fit, so a machine that cannot serve the recipe says why instead of failing later in a
traceback. The weights are looked up in the Hugging Face cache only, never downloaded; the data is
loaded as `train` loads it (packaged and local files; an HF dataset name through the datasets cache).
"""

from __future__ import annotations

from pathlib import Path

from intro_lite.config import Config
from intro_lite.doctor.checks import expects_gpu
from intro_lite.errors import ConfigError, first_line


class CannotRunHere(ConfigError):
    """What the recipe needs and the machine lacks, one line each (the CLI prints it and exits 2)."""


WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt")


def gpu_gap(cfg: Config) -> str:
    """Empty when there is a CUDA device or the recipe does not expect one; else what is missing and what to set."""
    import torch

    if torch.cuda.is_available() or not expects_gpu(cfg):
        return ""
    how = "" if cfg.model.device == "cuda" else '; set model.device = "cpu" to run on the CPU anyway (slow)'
    return f"GPU: no CUDA device here, and this recipe (model {cfg.model.name_or_path}) expects one{how}"


def model_weights(name: str) -> tuple[str, str, str]:
    """(status, detail, what is missing or "") for a local directory or a hub name, without a download."""
    path = Path(name)
    if path.exists():
        weights = [f for pattern in WEIGHT_GLOBS for f in path.glob(pattern)]
        if not (path / "config.json").is_file() or not weights:
            missing = f"{name}: no config.json and weights (*.safetensors) in that directory"
            return "fail", missing, missing
        return "ok", f"{name} (local directory)", ""
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the cache (or not a valid repo id)
        folder = None
    if folder is not None and any(f for pattern in WEIGHT_GLOBS for f in folder.glob(pattern)):
        return "ok", f"{name} -> {folder}", ""
    where = f"not in the Hugging Face cache ({constants.HF_HUB_CACHE})" if folder is None else \
        f"in the Hugging Face cache without its weights ({folder})"
    if not constants.HF_HUB_OFFLINE:
        return "warn", f"{name}: {where}; the first run downloads it (needs network)", ""
    missing = (f"{name} is {where} and the hub is offline (HF_HUB_OFFLINE=1): run `hf download {name}` where "
               "there is network (with the same HF_HOME), or set model.name_or_path to a local copy")
    return "fail", missing, missing


def data_check(cfg: Config) -> tuple[str, str, str]:
    """(status, detail, what is missing or "") for the training data: loaded and filtered as `train` does."""
    from intro_lite.data.problems import LoadReport, load_problems

    report = LoadReport()
    try:
        problems = load_problems(cfg.data, report=report)
    except Exception as e:  # ConfigError: one line naming the file or dataset; anything else, its first line
        line = first_line(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {first_line(e)}"
        return "fail", line, line
    source = cfg.data.source if isinstance(cfg.data.source, str) else ", ".join(cfg.data.source)
    return "ok", f"{len(problems)} problems from {source} ({report.total} records read)", ""


def would_fit(cfg: Config, model_config: dict | None) -> str:
    """The memory estimate on 24 and 80 GB GPUs, from the model's config.json numbers (read or tabled)."""
    from intro_lite.doctor.memory import gpu_summary

    if not model_config:
        return (f"would fit: unknown (no config.json of {cfg.model.name_or_path} here, and it is not one of the "
                "models in intro_lite/doctor/architectures.py)")
    return "would fit: " + "; ".join(gpu_summary(cfg, model_config, gb) for gb in (24, 80))


def tabled_config(name: str) -> dict | None:
    from intro_lite.doctor.architectures import ARCHITECTURES

    return ARCHITECTURES.get(name)
