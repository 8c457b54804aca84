import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # Recipes name paths relative to the repository root, as a user running `intro-lite` there does.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The small 'test' preset of the embedded model, built once per session into a private cache."""
    from intro_lite.tiny import ensure_tiny_assets

    cache = tmp_path_factory.mktemp("tiny-cache")
    os.environ["INTRO_LITE_CACHE"] = str(cache)
    return ensure_tiny_assets(cache, preset="test")
