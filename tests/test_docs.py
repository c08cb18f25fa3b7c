"""The project's math document, docs/math.md, is what the code and README cite: every citation
of one of its sections names a heading that exists there, and no file cites the team's notes
outside the repository."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = "docs/math.md"
TEXT_SUFFIXES = (".py", ".md", ".toml", ".txt")

# A section number: "5", "3.4". A citation is the document's path, then one or more section
# numbers or en-dash ranges ("1–4": both ends must exist) joined by commas and "and", as in
# "§1–4", "§1, §2 and §4", "§6 and §2, §5". A closing backtick, bracket or parenthesis (a
# Markdown link) and a line break (with a comment's "#") may stand between path and "§".
_NUMBER = r"\d+(?:\.\d+)*"
_ONE = rf"§{_NUMBER}(?:\s*[–-]\s*{_NUMBER})?"
_SEPARATOR = r"(?:\s*,\s*(?:and\s+)?|\s+and\s+)"
CITATION = re.compile(rf"{re.escape(DOC)}[`)\]]*[\s#]*({_ONE}(?:{_SEPARATOR}{_ONE})*)")
HEADING = re.compile(r"^#{1,6}\s+(\S+)", flags=re.M)

# Spelled in pieces so that this file does not cite them itself.
FORBIDDEN = ("MATH" + ".md", ".." + "/shared")


def doc_sections(markdown: str) -> set[str]:
    """The section numbers of a Markdown document: the first token of each heading, when it
    is a number ("## 1. Forward process" → "1", "### 4.2 Respacing" → "4.2")."""
    tokens = (token.rstrip(".") for token in HEADING.findall(markdown))
    return {token for token in tokens if re.fullmatch(_NUMBER, token)}


def cited_sections(citation: str) -> list[str]:
    """The section numbers one citation names, both ends of each range."""
    return re.findall(_NUMBER, citation)


def missing_citations(files: dict[str, str], sections: set[str]) -> list[str]:
    """'path:line: cites docs/math.md §X, which has no such section' for each citation in
    `files` (path → text) of a section not in `sections`."""
    problems = []
    for path, text in files.items():
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            for number in cited_sections(match.group(1)):
                if number not in sections:
                    problems.append(f"{path}:{line}: cites {DOC} §{number}, which has no such section")
    return problems


def forbidden_citations(files: dict[str, str]) -> list[str]:
    """'path:line: …' for each line of `files` that cites a file outside the repository."""
    problems = []
    for path, text in files.items():
        for number, line in enumerate(text.splitlines(), start=1):
            for name in FORBIDDEN:
                if name in line:
                    problems.append(f"{path}:{number}: cites {name!r}: {line.strip()}")
    return problems


def tracked_text_files() -> dict[str, str]:
    """path → text of the repository's tracked *.py, *.md, *.toml and *.txt files."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error})")
    files = {}
    for path in listing.split("\0"):
        full = ROOT / path
        if path.endswith(TEXT_SUFFIXES) and full.is_file():
            files[path] = full.read_text(encoding="utf-8")
    return files


def test_every_cited_section_exists():
    sections = doc_sections((ROOT / DOC).read_text(encoding="utf-8"))
    files = tracked_text_files()
    problems = missing_citations(files, sections)
    assert not problems, "\n".join(problems)


def test_nothing_cites_files_outside_the_repository():
    """The code and README cite docs/math.md, never the team's notes beside the checkout."""
    problems = forbidden_citations(tracked_text_files())
    assert not problems, "\n".join(problems)


def test_the_document_is_numbered_in_order():
    """Top-level sections 1, 2, 3, … in order; subsections n.1, n.2, … inside section n."""
    text = (ROOT / DOC).read_text(encoding="utf-8")
    top, sub = 0, 0
    for level, token in re.findall(r"^(#{2,3})\s+(\S+)", text, flags=re.M):
        number = token.rstrip(".")
        if not re.fullmatch(_NUMBER, number):
            continue
        if level == "##":
            top, sub = top + 1, 0
            assert token == f"{top}.", f"section {token!r} where '{top}.' was expected"
        else:
            sub += 1
            assert number == f"{top}.{sub}", f"subsection {number!r} where '{top}.{sub}' was expected"
    assert top == 8, f"the document has {top} numbered sections; §1–§8 are cited"
    assert {"3.4", "4.1", "4.2", "4.3", "5.2"} <= doc_sections(text)


# ---- the helpers themselves --------------------------------------------------------------------------


def test_doc_sections_reads_heading_numbers():
    markdown = "# Title\n## Notation\n## 1. Forward\n### 1.2 Schedules\n## 10. Ten\ntext 3.\n"
    assert doc_sections(markdown) == {"1", "1.2", "10"}


@pytest.mark.parametrize(
    ("text", "cited"),
    [
        (f"({DOC} §5)", ["5"]),
        (f"({DOC} §3.4, Salimans & Ho)", ["3.4"]),
        (f"({DOC} §1–4)", ["1", "4"]),
        (f"{DOC} §1, §2 and §4", ["1", "2", "4"]),
        (f"({DOC} §6 and §2, §5): Gaussian", ["6", "2", "5"]),
        (f"[`{DOC}`]({DOC}) §4.2", ["4.2"]),
        (f"a respaced chain ({DOC}\n    §4, fewer steps)", ["4"]),
        (f"# the chain ({DOC}\n    # §7)", ["7"]),
        (f"({DOC} §5, L_0; DDPM §3.3)", ["5"]),
    ],
)
def test_citations_are_parsed(text, cited):
    assert [n for m in CITATION.finditer(text) for n in cited_sections(m.group(1))] == cited


def test_a_missing_section_is_reported_with_file_line_and_section():
    files = {
        "pkg/a.py": f'"""Module.\n\nThe bound ({DOC} §5, §9.1).\n"""\n',
        "README.md": f"See {DOC} §1–12 and {DOC} §3.4.\n",
    }
    problems = missing_citations(files, {"1", "3.4", "5"})
    assert problems == [
        f"pkg/a.py:3: cites {DOC} §9.1, which has no such section",
        f"README.md:1: cites {DOC} §12, which has no such section",
    ]
    assert missing_citations(files, {"1", "3.4", "5", "9.1", "12"}) == []


def test_a_citation_outside_the_repository_is_reported():
    name = FORBIDDEN[0]
    files = {"x.py": f"ok = 1\n# see {name} §2\n", "README.md": f"[notes]({FORBIDDEN[1]}/{name})\n"}
    problems = forbidden_citations(files)
    assert [p.split(": ")[0] for p in problems] == ["x.py:2", "README.md:1", "README.md:1"]
    assert forbidden_citations({"y.py": f"# {DOC} §2\n"}) == []
