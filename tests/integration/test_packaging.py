"""The distribution: every directory that ships files is in pyproject.toml's package list, and
building the wheel and the sdist prints no setuptools warning about it (there were ~130 lines,
one block per data directory left out). The plain install itself (a fresh venv, the wheel
without extras, the demo and the README sample) is .ci/install_smoke.py, run by .ci/run."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def shipped_directories() -> set[str]:
    """Package names of the directories whose files the wheel ships: trio_rt/ and examples/
    (as trio_rt_examples), less caches and the examples that are documentation only."""
    found = set()
    for top, name in [(ROOT / "trio_rt", "trio_rt"), (ROOT / "examples", "trio_rt_examples")]:
        for directory in [top, *(p for p in top.rglob("*") if p.is_dir())]:
            relative = directory.relative_to(top)
            if "__pycache__" in relative.parts:
                continue
            files = [p for p in directory.iterdir() if p.is_file()]
            documentation_only = not any(p.suffix == ".py" for p in files)
            if name == "trio_rt_examples" and documentation_only and relative.parts != ("web",):
                continue  # deploy/, grafana/, prometheus/: not shipped
            if files:
                found.add(".".join([name, *relative.parts]))
    return found


def test_every_shipped_directory_is_a_listed_package() -> None:
    assert set(SETUPTOOLS["packages"]) == shipped_directories()


def test_package_data_is_declared_for_each_data_directory() -> None:
    data = SETUPTOOLS["package-data"]
    for package in ("trio_rt.static", "trio_rt.testing.cassandra", "trio_rt_examples.web"):
        assert package in data, package


@pytest.mark.slow
def test_the_wheel_and_sdist_build_without_warnings_and_ship_their_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert not re.search(r"absent from the `packages` configuration", output), output
    assert "Package would be ignored" not in output
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "trio_rt/py.typed",
        "trio_rt/static/trio_rt.js",
        "trio_rt/testing/cassandra/cassandra.yaml.in",
        "trio_rt/testing/cassandra/pom.xml",
        "trio_rt_examples/web/index.html",
        "trio_rt_examples/web/app.js",
        "trio_rt_examples/web/style.css",
        "trio_rt_examples/chat.py",
        "trio_rt_examples/capabilities/README.md",
    ]:
        assert expected in names, expected
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
