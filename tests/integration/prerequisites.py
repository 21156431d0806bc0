"""What the browser tests need from the machine, checked so that a missing piece FAILS with the
command that installs it instead of silently skipping (`./dev test` runs every test).

``TRIO_RT_SKIP_BROWSER=1`` is the one documented way to run without them: the browser tests
(Chromium via Playwright, and the browser client's unit tests on Node) are then skipped, saying
why. README.md and docs/development.md describe it; `./dev test` installs Chromium and Node as
root (apt-get) and otherwise stops before pytest with the same command.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

OPT_OUT = "TRIO_RT_SKIP_BROWSER"
APT = "sudo apt-get update && sudo apt-get install -y --no-install-recommends"
# name -> (how to tell it is there, how to install it)
REQUIREMENTS = {
    "chromium": ("chromium", f"{APT} chromium"),
    "node": ("node", f"{APT} nodejs"),
    "playwright": ("playwright", "pip install -e '.[dev]' (or ./dev test, which installs it)"),
}


def _present(name: str) -> bool:
    if name == "playwright":
        return importlib.util.find_spec("playwright") is not None
    return shutil.which(REQUIREMENTS[name][0]) is not None


def missing(*names: str) -> list[str]:
    """The sentences for what is missing among `names`: ``"chromium is not installed: ..."``."""
    return [
        f"{name} is not installed: {REQUIREMENTS[name][1]}" for name in names if not _present(name)
    ]


def require(*names: str) -> None:
    """Fail the calling test when one of `names` is missing, naming the install command;
    skip it instead when TRIO_RT_SKIP_BROWSER=1 is set."""
    problems = missing(*names)
    if not problems:
        return
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        pytest.skip(f"{OPT_OUT} is set: " + "; ".join(problems))
    pytest.fail(
        "; ".join(problems) + f" (or set {OPT_OUT}=1 to skip the browser tests)", pytrace=False
    )
