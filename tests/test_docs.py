"""The documentation stays inside the repository and stays true.

- no file of the project refers to notes that are not in the repository;
- every link to a markdown file (and every ``#anchor`` in it) in README.md and docs/ resolves;
- every ``docs/math.md §N`` reference in the code, tests and docs names an existing section;
- the Python examples of README.md and docs/math.md run, each in a fresh namespace (a block
  whose first line is ``# not run`` is skipped by design: use it for fragments).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("src", "tests", "docs", "benchmarks")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".sh", ".c", ".h", ".yaml", ".yml", ".json", ".rst"}
# spelled in two parts so that this file does not match itself
FORBIDDEN = ("MATH" + ".md", "DESIGN" + ".md")
RUNNABLE = ("README.md", "docs/math.md")
NOT_RUN = "# not run"


def _text_files():
    files = [ROOT / "README.md"]
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts:
                files.append(p)
    return files


def _markdown_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------- (a) nothing outside the repo
def _forbidden_mentions(files):
    out = []
    for p in files:
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(name in line for name in FORBIDDEN):
                out.append(f"{p}:{i}: {line.strip()}")
    return out


def test_no_reference_to_notes_outside_the_repository():
    offenders = _forbidden_mentions(_text_files())
    assert not offenders, "files refer to notes that are not part of the repository:\n" + "\n".join(offenders)


def test_the_scan_catches_a_reference(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text('"""See docs/math.md §3."""\n')
    bad.write_text('"""Background:\nsee ' + FORBIDDEN[1] + ' for the design."""\n')
    assert _forbidden_mentions([good]) == []
    assert _forbidden_mentions([good, bad]) == [f"{bad}:2: see {FORBIDDEN[1]} for the design.\"\"\""]


# ---------------------------------------------------------------- links and section references
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md: Path) -> set:
    out, fenced = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            out.add(_slug(m.group(2)))
    return out


def _links(md: Path):
    text = md.read_text(encoding="utf-8")
    for m in _LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        yield text[: m.start()].count("\n") + 1, target


@pytest.mark.parametrize("md", _markdown_files(), ids=_rel)
def test_markdown_links_resolve(md):
    broken = []
    for line, target in _links(md):
        path, _, anchor = target.partition("#")
        dest = md if not path else (md.parent / path).resolve()
        if not dest.exists():
            broken.append(f"{_rel(md)}:{line}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{_rel(md)}:{line}: {target} (no heading with anchor #{anchor})")
    assert not broken, "\n".join(broken)


def test_docs_paths_mentioned_in_text_exist():
    """Bare mentions such as ``docs/lti.md`` in README, docs, code and tests name real files."""
    missing = []
    for p in _text_files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name in re.findall(r"\bdocs/[\w./-]*?\.md\b", line):
                if not (ROOT / name).is_file():
                    missing.append(f"{_rel(p)}:{i}: {name}")
    assert not missing, "\n".join(missing)


def _math_sections() -> set:
    out = set()
    for line in (ROOT / "docs" / "math.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{2,3}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if m:
            out.add(m.group(1))
    return out


def test_math_section_references_exist():
    sections = _math_sections()
    assert {"1", "1.4", "2.5", "6.3", "10.3", "11.2"} <= sections  # the parser sees the headings
    bad = []
    for p in _text_files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in re.findall(r"docs/math\.md §(\d+(?:\.\d+)*)", line):
                if ref not in sections:
                    bad.append(f"{_rel(p)}:{i}: §{ref}")
    assert not bad, "references to sections docs/math.md does not have:\n" + "\n".join(bad)


# ---------------------------------------------------------------- (b) the examples run
def _python_blocks():
    blocks = []
    for name in RUNNABLE:
        text = (ROOT / name).read_text(encoding="utf-8")
        for m in re.finditer(r"^```python[ \t]*\n(.*?)^```", text, re.S | re.M):
            code = m.group(1)
            if code.lstrip().startswith(NOT_RUN):
                continue
            line = text[: m.start()].count("\n") + 2  # first line of code
            blocks.append(pytest.param(name, line, code, id=f"{name}:{line}"))
    return blocks


def test_runnable_blocks_are_found():
    found = {p.values[0] for p in _python_blocks()}
    assert found == set(RUNNABLE)


@pytest.mark.parametrize("name, line, code", _python_blocks())
def test_python_block_runs(name, line, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands in a temporary folder
    namespace = {"__name__": "__docs_example__"}
    exec(compile("\n" * (line - 1) + code, os.fspath(ROOT / name), "exec"), namespace)
