"""What the project says about itself agrees: the Python floor in pyproject, the README and the doctor."""

import re
import tomllib
from pathlib import Path

from intro_lite.doctor.checks import MIN_PYTHON

REPO = Path(__file__).resolve().parent.parent


def test_python_floor_is_the_same_everywhere():
    with open(REPO / "pyproject.toml", "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    floor = re.fullmatch(r">=(\d+)\.(\d+)", requires.strip())
    assert floor, requires
    stated = re.findall(r"Python (\d+)\.(\d+)\+", (REPO / "README.md").read_text())
    assert stated and set(stated) == {floor.groups()}
    assert tuple(map(int, floor.groups())) == MIN_PYTHON
