"""The documentation site builds with `mkdocs build --strict`: no broken link, no missing
snippet, no API reference that fails to load."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_docs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # The pages written for the site include their samples from examples/.
    started = (site / "getting-started" / "index.html").read_text()
    assert "build_server" in started and "--8&lt;--" not in started
    assert "broadcast_to_room" in (site / "api" / "index.html").read_text()


# Pages written for the site: their code samples must come from files that tests run.
SITE_PAGES = ["index.md", "getting-started.md", "concepts.md", "browser.md", "api.md"]


@pytest.mark.parametrize("page", SITE_PAGES)
def test_site_pages_include_their_code_from_tested_files(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    for lang, body in blocks:
        if lang == "sh":  # commands (./dev demo, pip install), not code samples
            continue
        lines = [line for line in body.splitlines() if line.strip()]
        assert lines and all(re.fullmatch(r'--8<-- "[^"]+"', line) for line in lines), (
            f"docs/{page}: a {lang or 'plain'} code block that is not a --8<-- include of "
            f"a tested file:\n{body}"
        )
        for line in lines:
            path = line.split('"')[1].split(":")[0]
            assert (ROOT / path).is_file(), path
