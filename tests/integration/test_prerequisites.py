"""A machine without Chromium or Node fails the browser tests with the install command: they
are never skipped silently. Only TRIO_RT_SKIP_BROWSER=1 skips them (saying why). `./dev test`
stops before pytest with the same command when it cannot install what is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from . import prerequisites
from .prerequisites import require

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_browser_fails_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIO_RT_SKIP_BROWSER", raising=False)
    monkeypatch.setattr(prerequisites.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception) as info:
        require("chromium", "node")
    text = str(info.value)
    assert "chromium is not installed" in text and "apt-get install" in text
    assert "nodejs" in text and "TRIO_RT_SKIP_BROWSER=1" in text


def test_the_opt_out_skips_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_RT_SKIP_BROWSER", "1")
    monkeypatch.setattr(prerequisites.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception) as info:
        require("chromium")
    assert "TRIO_RT_SKIP_BROWSER is set" in str(info.value)
    assert "chromium is not installed" in str(info.value)


def test_present_tools_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prerequisites.shutil, "which", lambda name: f"/usr/bin/{name}")
    require("chromium", "node")  # no exception


def test_dev_test_stops_with_the_missing_system_packages(tmp_path: Path) -> None:
    """`./dev test` on a machine that lacks the system packages and may not install them
    (TRIO_RT_NO_APT=1, as a non-root user) prints what is missing and the command, and
    runs no test."""
    bin_dir = tmp_path / "bin"  # a PATH with the shell tools ./dev uses, and nothing else
    bin_dir.mkdir()
    for tool in ("bash", "cat", "sha256sum", "cut", "dirname", "id", "grep", "ls", "sed"):
        path = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if path:
            (bin_dir / tool).symlink_to(path)
    env = {
        "PATH": str(bin_dir),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "TRIO_RT_NO_APT": "1",
        "TRIO_RT_JAVA_HOME": str(tmp_path / "no-java"),
    }
    result = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "dev"), "test", "--collect-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    for package in ("redis-server", "redis-tools", "maven", "openjdk-17-jdk-headless"):
        assert package in result.stderr
    assert "chromium" in result.stderr and "nodejs" in result.stderr
    assert "apt-get install" in result.stderr and "TRIO_RT_SKIP_BROWSER=1" in result.stderr
    assert "collected" not in result.stdout  # pytest never ran
    with_opt_out = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "dev"), "test", "--collect-only"],
        capture_output=True,
        text=True,
        env={**env, "TRIO_RT_SKIP_BROWSER": "1"},
        timeout=120,
    )
    assert with_opt_out.returncode == 3
    first_line = with_opt_out.stderr.splitlines()[0]
    assert "chromium" not in first_line and "maven" in first_line, first_line
