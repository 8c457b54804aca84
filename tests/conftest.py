from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # Recipes name paths relative to the repository root, as a user running `intro-lite` there does.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny_assets():
    """The small 'test' preset of the embedded model (a few seconds to build; accuracy ~0).
    Both presets live in the user cache ($INTRO_LITE_CACHE or ~/.cache/intro-lite), keyed by a hash
    of their build parameters, so the runs that resolve `tiny`/`tiny-test` by name find them."""
    from intro_lite.tiny.assets import ensure_tiny_assets

    return ensure_tiny_assets(preset="test")


@pytest.fixture(scope="session")
def tiny_default_assets():
    """The demo's own tiny model (about 20-27% accurate after its warm-up), so end-to-end runs keep
    real correct rationales. Built once per machine (~2.5 min on 2 idle cores) in the user cache."""
    from intro_lite.tiny.assets import ensure_tiny_assets

    return ensure_tiny_assets(preset="default")


@pytest.fixture(scope="session")
def tiny_demo_assets():
    """The model recipes/tiny.toml trains: the choice task at the informative end of its dial
    (preset `choice`, ~27% accurate after its warm-up; ~3.5 min to build once on 2 cores)."""
    from intro_lite.tiny import ensure_tiny_assets

    return ensure_tiny_assets(preset="choice")
