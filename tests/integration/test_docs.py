"""The documentation site builds with `mkdocs build --strict`: no broken link, no missing
snippet, no API reference that fails to load."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


# Code in these languages may stay inline: commands, data and third-party configuration. Every
# other code block (python, yaml, js...) is a --8<-- include of a file under examples/ (or of the
# package) that a test runs, so that what a page shows is what the tests run.
INLINE_LANGUAGES = {"", "text", "json", "sh", "bash", "console", "nginx", "haproxy"}
FENCE = re.compile(r"^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
INCLUDE = re.compile(r'--8<-- "([^":]+)(?::([^"]+))?"')
PAGES = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
TESTS_TEXT = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))


def looks_like_python(body: str) -> bool:
    """An unlabelled block that compiles as Python (calls included) is code, not a diagram."""
    try:
        compile(body, "block", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return "(" in body


@pytest.mark.parametrize("page", PAGES)
def test_every_page_includes_its_code_from_tested_files(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    for lang, body in FENCE.findall(text):
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        if all(INCLUDE.fullmatch(line) for line in lines) and lines:
            for line in lines:
                match = INCLUDE.fullmatch(line)
                assert match is not None
                path, name = match.groups()
                file = ROOT / path
                assert file.is_file(), path
                # examples/, or the package itself (concepts.md shows the browser client)
                assert file.is_relative_to(ROOT / "examples") or file.is_relative_to(
                    ROOT / "trio_rt"
                ), path
                # a file that a test runs: a module it imports, or a file it names
                assert file.name in TESTS_TEXT or (
                    file.suffix == ".py" and re.search(rf"\b{file.stem}\b", TESTS_TEXT)
                ), path
                if name is not None:
                    assert f"--8<-- [start:{name}]" in file.read_text(), (path, name)
            continue
        assert lang in INLINE_LANGUAGES, (
            f"docs/{page}: a {lang} code block that is not a --8<-- include of a tested "
            f"file under examples/:\n{body}"
        )
        assert not (lang in ("", "text") and looks_like_python(body)), (
            f"docs/{page}: a plain block that is Python code; include it from examples/:\n{body}"
        )


def test_the_page_check_catches_inline_code() -> None:
    """The check above is not vacuous: it finds what it must refuse."""
    assert looks_like_python("WebSocketManager(history=RoomHistory(store, sequencer))\n")
    assert not looks_like_python("serve()\n └─ guard nursery\n")
    assert not looks_like_python("delay(n) = min(max_delay, d) * (1 - jitter * U[0,1))\n")
    blocks = FENCE.findall("text\n```python\nx = 1\n```\n\n  ```yaml\n  a: 1\n  ```\n")
    assert blocks == [("python", "x = 1\n"), ("yaml", "  a: 1\n")]
    assert all(lang not in INLINE_LANGUAGES for lang, _ in blocks)


# -- installing: the docs must not promise a package-index release that does not exist --------
CHANGELOG = ROOT / "CHANGELOG.md"
RELEASED = re.compile(r"^## v?\d+\.\d+\.\d+", re.M)  # "## 0.2.0 - 2027-01-15"
INDEX_INSTALL = re.compile(
    r"pip install\s+(?:-\S+\s+)*[\"']?trio_rt(?:\[[\w,]+\])?[\"']?(?=\s|$)(?!\s*@)"
)


def install_commands() -> list[tuple[str, str]]:
    """Every `pip install` line in a shell block of README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for lang, body in FENCE.findall(path.read_text()):
            if lang in ("sh", "bash", "console", ""):
                found += [(path.name, ln) for ln in body.splitlines() if "pip install" in ln]
    return found


def test_install_docs_match_what_is_released() -> None:
    """Until CHANGELOG.md has a released version, every documented install comes from the
    repository, a wheel or an sdist: `pip install "trio_rt[all]"` from the index would fail."""
    commands = install_commands()
    assert any("git+" in line for _, line in commands)  # the git URL is documented
    assert any(".whl" in line for _, line in commands)  # and a built wheel
    if RELEASED.search(CHANGELOG.read_text()):
        return
    wrong = [(page, line) for page, line in commands if INDEX_INSTALL.search(line)]
    assert not wrong, f"installs from the package index, which has no release: {wrong}"


def test_the_check_finds_an_index_install() -> None:
    assert INDEX_INSTALL.search('pip install "trio_rt[all]"   # or only the extras')
    assert INDEX_INSTALL.search("pip install trio_rt")
    assert not INDEX_INSTALL.search('pip install "trio_rt @ git+$REPO"')
    assert not INDEX_INSTALL.search('pip install "dist/trio_rt-0.1.0-py3-none-any.whl[redis]"')


def test_version_and_changelog_agree() -> None:
    import tomllib

    import trio_rt

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert trio_rt.__version__ == version
    text = CHANGELOG.read_text()
    assert "\n## Unreleased\n" in text
    released = RELEASED.findall(text)
    if released:  # the newest release section names the package's version (docs/release.md)
        assert released[0].lstrip("# v") == version, released[0]


def nox_sessions() -> set[str]:
    """The session names of noxfile.py: parametrized ones as NAME-PYTHON (and NAME, which
    selects them all)."""
    import importlib.util

    import nox.registry  # the dev extra has nox

    before = dict(nox.registry.get())
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    names = set()
    for name, func in nox.registry.get().items():
        names.add(name)
        if isinstance(func.python, list | tuple):
            names.update(f"{name}-{python}" for python in func.python)
    nox.registry._REGISTRY.clear()
    nox.registry._REGISTRY.update(before)
    return names


def test_readme_names_the_nox_sessions_as_nox_lists_them() -> None:
    sessions = nox_sessions()
    readme = (ROOT / "README.md").read_text()
    # what `nox -l` lists: tests-3.11 ... rather than the `tests` that selects them all
    listed = {s for s in sessions if not any(t.startswith(f"{s}-") for t in sessions)}
    assert "tests-3.11" in listed and "lint" in listed
    for name in listed:
        assert f"`{name}`" in readme or f"-s {name}" in readme, name
    for name in re.findall(r"nox -s ([\w.-]+)", readme):
        assert name in sessions, name
