"""The fenced blocks of the README and the documentation pages, for the docs tests.

A block is marked on the line before it: ``<!-- test -->`` (run on bundled data) or
``<!-- test: demo -->`` (run on a demo output); see ``tests/test_docs.py``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"<!-- test(?::\s*(?P<kind>[\w-]+))? -->")
KINDS = ("test", "demo")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it is, its language, its mark and its lines."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    kind: str | None  # the mark's kind ("test", "demo"), or None when unmarked
    body: tuple[str, ...]
    output: tuple[str, ...] | None = None  # a python block's shown output (```text after it)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def steps(self) -> list[tuple[str, list[str]]]:
        """A console block as (command, shown output lines) pairs."""
        found: list[tuple[str, list[str]]] = []
        for text in self.body:
            if text.startswith("$ "):
                found.append((text[2:], []))
            elif found:
                found[-1][1].append(text)
            else:
                raise AssertionError(f"{self.where}: output before the first '$ ' line")
        return found


def read_blocks(page: Path) -> list[Block]:
    """Every top-level fenced block of ``page``, in order."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    number = 0
    while number < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[number])
        if not opening:
            number += 1
            continue
        end = next(i for i in range(number + 1, len(lines)) if lines[i].rstrip() == "```")
        mark = MARK.fullmatch(lines[number - 1].strip()) if number else None
        kind = (mark["kind"] or "test") if mark else None
        blocks.append(Block(page, number + 1, opening[1], kind, tuple(lines[number + 1 : end])))
        number = end + 1
    for i, block in enumerate(blocks):  # a run python block prints the ```text block after it
        later = blocks[i + 1] if i + 1 < len(blocks) else None
        if block.language == "python" and later and later.language == "text":
            between = lines[block.line + len(block.body) + 1 : later.line - 1]
            if all(not text.strip() or text.strip() == "prints" for text in between):
                blocks[i] = dataclasses.replace(block, output=later.body)
    return blocks


BLOCKS = {page: read_blocks(page) for page in PAGES}


def marked(kind: str) -> dict[Path, list[Block]]:
    found = {page: [b for b in blocks if b.kind == kind] for page, blocks in BLOCKS.items()}
    return {page: blocks for page, blocks in found.items() if blocks}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))
