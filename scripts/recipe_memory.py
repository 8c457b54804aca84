"""Print the doctor's memory estimate of a recipe on 24 GB and 80 GB GPUs, from the base model's
public config.json numbers (intro_lite/doctor/architectures.py; nothing is downloaded):

    python scripts/recipe_memory.py recipes/qwen2.5-7b.toml

The recipes' header comments hold these lines (tests/test_paper_recipes.py keeps them current)."""

import sys

from intro_lite.config import load_config
from intro_lite.doctor.architectures import ARCHITECTURES
from intro_lite.doctor.memory import gpu_summary

for path in sys.argv[1:]:
    cfg = load_config(path)
    for gb in (24, 80):
        print(f"#   {gpu_summary(cfg, ARCHITECTURES[cfg.model.name_or_path], gb)}")
