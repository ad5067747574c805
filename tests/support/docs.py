"""The user-facing documents (README.md and docs/*.md) read as the checks in tests/unit/test_readme_commands.py
and tests/system/test_readme.py need them: fenced blocks and inline code spans with their line numbers, so a
failure names the line to fix."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+(?:\n(?!\s*\n)[^`\n]*)*)`")  # a code span, possibly over lines, never over a blank


@dataclass(frozen=True)
class Code:
    """A piece of code from a document: a fenced block (language, body) or an inline span (language "")."""

    path: Path
    line: int  # of its first character
    text: str
    fenced: bool
    language: str = ""
    block: str = ""  # the paragraph or list the inline span stands in (blank-line delimited); "" for a fence

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def fenced(path: Path) -> list[Code]:
    text = path.read_text()
    return [Code(path, line_of(text, m.start(2)), m.group(2), True, m.group(1)) for m in FENCE.finditer(text)]


def prose(path: Path) -> str:
    """The document with its fenced blocks blanked out (their newlines kept, so offsets give the same lines)."""
    text = path.read_text()
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def inline(path: Path) -> list[Code]:
    text = prose(path)
    found = []
    for m in INLINE.finditer(text):
        start = text.rfind("\n\n", 0, m.start()) + 2 if "\n\n" in text[:m.start()] else 0
        end = text.find("\n\n", m.end())
        found.append(Code(path, line_of(text, m.start(1)), " ".join(m.group(1).split()), False,
                          block=text[start:end if end >= 0 else len(text)]))
    return found


def command_lines(code: Code) -> list[tuple[int, str]]:
    """A fenced block's lines as (line number, command), backslash continuations joined; an inline span whole."""
    if not code.fenced:
        return [(code.line, code.text)]
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(code.text.splitlines(), code.line):
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        lines.append((number, line))
    return lines


def brace_expand(word: str) -> list[str]:
    """`a_{b,c}_d` -> [a_b_d, a_c_d], as the shell does (every group)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", word)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def documented(pattern: str, path: Path = ROOT / "README.md") -> tuple[str, str]:
    """The one inline code span of a document that the regex `pattern` matches (group 1), and where it is."""
    text = prose(path)
    found = list(re.finditer(pattern, text))
    assert len(found) == 1, f"{path.relative_to(ROOT)}: expected one match of {pattern!r}, found {len(found)}"
    return found[0].group(1), f"{path.relative_to(ROOT)}:{line_of(text, found[0].start())}"


REDIS_KEY = r"`(inference_server:<[^`]+)`"  # README's Redis key format
CSV_HEADER = r"for `digits`: `([^`]+)`"  # README's batch_score .csv header for the default model


def expand_ellipsis(columns: str) -> list[str]:
    """`a,b[0],...,b[3]` -> [a, b[0], b[1], b[2], b[3]]."""
    names = columns.split(",")
    out: list[str] = []
    for i, name in enumerate(names):
        if name != "...":
            out.append(name)
            continue
        first, last = re.fullmatch(r"(.+)\[(\d+)\]", out[-1]), re.fullmatch(r"(.+)\[(\d+)\]", names[i + 1])
        assert first and last and first.group(1) == last.group(1), f"cannot expand ... in {columns}"
        out += [f"{first.group(1)}[{k}]" for k in range(int(first.group(2)) + 1, int(last.group(2)))]
    return out
