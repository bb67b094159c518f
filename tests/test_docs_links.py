"""The README and the pages under docs/: every relative link resolves, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README_MAX_LINES = 150

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _CODE_SPAN.sub("", line)))
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, -N for repeats)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` whose file, or whose heading anchor in a Markdown file, is missing."""
    problems = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if _SCHEME.match(target):
                continue  # http(s), mailto: not checked (no network)
            path_part, _, fragment = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.name}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where} (no file {resolved})")
            elif (
                fragment
                and resolved.suffix == ".md"
                and fragment not in heading_anchors(resolved.read_text(encoding="utf-8"))
            ):
                problems.append(f"{where} (no heading #{fragment} in {resolved.name})")
    return problems


def _pages(repo_root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]


def test_every_relative_link_resolves(repo_root: Path) -> None:
    problems = [problem for page in _pages(repo_root) for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_front_page(repo_root: Path) -> None:
    lines = (repo_root / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} and move manuals to docs/"
    )


def test_every_docs_page_is_linked_from_the_readme(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    linked = {
        Path(t.partition("#")[0]).as_posix() for _, line in _prose_lines(readme) for t in _LINK.findall(line)
    }
    missing = [p.name for p in sorted((repo_root / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[ok](other.md) [ok](other.md#a-b--c) ![img](img/x.png) [web](https://example.org/none)", []),
        ("[gone](missing.md)", ["missing.md"]),
        ("[bad anchor](other.md#nowhere)", ["#nowhere"]),
        ("[own anchor](#here) [bad own](#there)", ["#there"]),
        ("`[code](missing.md)`\n```\n[fenced](missing.md)\n```", []),
        ("![image](img/missing.png)", ["missing.png"]),
    ],
)
def test_checker_finds_what_is_broken(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(b"")
    (tmp_path / "other.md").write_text("# A, b — c?\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("## Here\n" + text + "\n")
    problems = broken_links(page)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_anchors_follow_github() -> None:
    text = "# Docker / Apptainer\n## Model (`model:`)\n## Faults\n## Faults\n```\n# shell comment\n```\n"
    assert heading_anchors(text) == {"docker--apptainer", "model-model", "faults", "faults-1"}
