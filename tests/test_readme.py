"""The README's marked command blocks run, and print exactly what the README shows.

A block is marked by a ``<!-- readme-test ... -->`` line right before a ```console fence;
its ``$ lapsv ...`` lines run (through ``lapsv.cli.main``, in a folder holding a copy of
``tests/data`` and ``tests/conversation``) and their standard output must equal the lines
shown under them. Numbers are compared at the precision the README prints them, so a
changed model or output format fails here instead of silently staling the README.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from lapsv.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- readme-test"


def marked_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each marked block as (command, expected output lines) pairs."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if not line.startswith(MARK):
            continue
        assert lines[number + 1] == "```console", f"README line {number + 2}: expected ```console"
        steps: list[tuple[str, list[str]]] = []
        for body in lines[number + 2 :]:
            if body == "```":
                break
            if body.startswith("$ "):
                steps.append((body[2:], []))
            else:
                steps[-1][1].append(body)
        blocks.append(steps)
    return blocks


def differences(steps: list[tuple[str, list[str]]], run) -> list[str]:
    """Every step whose output differs from the README's, as a readable line."""
    found = []
    for command, expected in steps:
        printed = run(command)
        if printed != expected:
            found.append(f"$ {command}\n  README: {expected}\n  prints: {printed}")
    return found


BLOCKS = marked_blocks((ROOT / "README.md").read_text())


def test_the_readme_has_a_tested_block():
    assert BLOCKS and all(BLOCKS)


@pytest.mark.parametrize("steps", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_prints_what_it_shows(steps, tmp_path, monkeypatch, capsys):
    for folder in ("data", "conversation"):
        shutil.copytree(ROOT / "tests" / folder, tmp_path / "tests" / folder)
    monkeypatch.chdir(tmp_path)

    def run(command: str) -> list[str]:
        argv = shlex.split(command)
        assert argv[0] == "lapsv", command
        code = main(argv[1:])
        out = capsys.readouterr().out
        assert code == 0, (command, out)
        return out.splitlines()

    assert differences(steps, run) == []


def test_one_changed_digit_is_caught():
    """The comparison is exact at the printed precision: a README edited by one digit fails."""
    command, expected = BLOCKS[0][1]
    edited = [line.replace("0.9273", "0.9274") for line in expected]
    assert edited != expected
    assert differences([(command, edited)], lambda _: expected) != []
    assert differences([(command, expected)], lambda _: expected) == []
