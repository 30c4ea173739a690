"""The README and the documentation pages: every example runs, and prints what it shows.

A ```console or ```python block is marked on the line before it (docs/development.md):

* ``<!-- test -->``: run here, on copies of ``tests/data`` and ``tests/conversation`` in a
  temporary folder; the marked blocks of a page run in order in one folder. Each ``$ ``
  line runs (``lapsv`` through :func:`lapsv.cli.main`, anything else through bash) and
  its standard output must equal the lines under it, exactly (a line of JSON: as JSON,
  numbers to 1e-4). A python block's output is the ```text block after it.
* ``<!-- test: demo -->``: needs a finished ``make demo``; a slow test runs these blocks in
  a folder where ``lapsv-demo`` points at ``$LAPSV_DEMO_OUT``. Another machine trains other
  weights, so numbers, model ids and timestamps are masked before comparing.

``test_docs_commands.py`` parses every ``lapsv ...`` line of any block, and checks the CLI
reference page, the README's length and links, and a demo output's figures against the
documented spread.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from docs_pages import BLOCKS, KINDS, ROOT, Block, marked, page_id
from lapsv.cli import main

RUN = ("console", "python")  # blocks that must be marked, and are run
JSON_TOLERANCE = 1e-4
SERVER_SECONDS = 180  # a server's start-up on a busy 2-core machine
DEMO_OUT = os.environ.get("LAPSV_DEMO_OUT")


# --- running the examples -------------------------------------------------------------


def expand_braces(word: str) -> list[str]:
    """Bash's brace expansion of one word (``a_000{1,2}.flac``), no nesting."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    return [w for part in match[1].split(",") for w in expand_braces(head + part + tail)]


def words(command: str) -> list[str]:
    return [w for word in shlex.split(command) for w in expand_braces(word)]


def json_equal(shown: object, printed: object) -> bool:
    """Equal JSON values, numbers within :data:`JSON_TOLERANCE`."""
    if isinstance(shown, dict) and isinstance(printed, dict):
        return shown.keys() == printed.keys() and all(
            json_equal(shown[k], printed[k]) for k in shown
        )
    if isinstance(shown, list) and isinstance(printed, list):
        return len(shown) == len(printed) and all(map(json_equal, shown, printed))
    numbers = (int, float)
    if isinstance(shown, numbers) and isinstance(printed, numbers):
        if isinstance(shown, bool) or isinstance(printed, bool):
            return shown is printed
        return math.isclose(shown, printed, rel_tol=0, abs_tol=JSON_TOLERANCE)
    return shown == printed


def exact_line(shown: str, printed: str) -> bool:
    if shown == printed:
        return True
    if shown.startswith(("{", "[")):
        try:
            return json_equal(json.loads(shown), json.loads(printed))
        except json.JSONDecodeError:
            return False
    return False


def mask(line: str) -> str:
    """A demo output line with what another demo run changes masked: model ids, numbers
    (scores, sizes, timestamps), the folder the demo lives in, and column padding."""
    line = re.sub(r"\S*/lapsv-demo/", "lapsv-demo/", line)
    line = re.sub(r"\b[0-9a-f]{16}\b", "<id>", line)
    line = re.sub(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", line)
    return " ".join(line.split())


def differences(
    shown: list[str], printed: list[str], *, same=exact_line, where: str = ""
) -> list[str]:
    """Empty when ``printed`` shows what the docs show; else one readable message."""
    if len(shown) == len(printed) and all(map(same, shown, printed)):
        return []
    return [f"{where}\n  docs:   {shown}\n  prints: {printed}"]


class Session:
    """A folder where one page's marked blocks run in order, as a reader would run them."""

    def __init__(self, folder: Path, capsys, *, demo: Path | None = None) -> None:
        self.folder, self.capsys, self.demo = folder, capsys, demo
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.background: list[subprocess.Popen] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = str(probe.getsockname()[1])
        for name in ("data", "conversation"):
            shutil.copytree(ROOT / "tests" / name, folder / "tests" / name)
        if demo is not None:
            (folder / "lapsv-demo").symlink_to(demo, target_is_directory=True)

    def close(self) -> None:
        for process in self.background:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def same(self, shown: str, printed: str) -> bool:
        if self.demo is None:
            return exact_line(shown, printed)
        printed = printed.replace(str(self.demo.resolve()), "lapsv-demo")
        return mask(shown) == mask(printed)

    def localised(self, text: str) -> str:
        """Port 8000 of the docs becomes a free port here."""
        text = re.sub(r"(?<=127\.0\.0\.1:)8000\b", self.port, text)
        return re.sub(r"(?<=--port )8000\b", self.port, text)

    def execute(self, command: str) -> tuple[int, list[str], list[str]]:
        """Run one command: (exit status, stdout lines, stderr lines)."""
        if command.split(maxsplit=1)[0] == "lapsv":
            self.capsys.readouterr()
            code = main(words(command)[1:])
            captured = self.capsys.readouterr()
            return code, captured.out.splitlines(), captured.err.splitlines()
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout.splitlines(), done.stderr.splitlines()

    def start(self, command: str, lines: int) -> list[str]:
        """Start ``lapsv ... &``: its first ``lines`` lines of output, once it listens."""
        argv = words(command)
        assert argv[0] == "lapsv", f"only lapsv runs in the background: {command}"
        process = subprocess.Popen(
            [sys.executable, "-m", "lapsv", *argv[1:]],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.background.append(process)
        printed: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in process.stdout:
                printed.put(line.rstrip("\n"))
            printed.put(None)  # the process closed its output: it has ended

        threading.Thread(target=read, daemon=True).start()
        shown = []
        with contextlib.suppress(queue.Empty):
            while len(shown) < lines and (line := printed.get(timeout=SERVER_SECONDS)) is not None:
                shown.append(line)
        if "--port" in argv:
            self.wait_for_port(int(argv[argv.index("--port") + 1]), process)
        return shown

    @staticmethod
    def wait_for_port(port: int, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + SERVER_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the server did not listen on port {port}")

    def step(self, command: str, shown: list[str], where: str) -> list[str]:
        command, shown = self.localised(command), [self.localised(s) for s in shown]
        assignment = re.fullmatch(r"(\w+)=\$\((.*)\)", command)
        if assignment:
            code, out, err = self.execute(assignment[2])
            assert code == 0, (where, command, err)
            self.env[assignment[1]] = "\n".join(out).strip()
            printed = err
        elif command.endswith(" &"):
            printed = self.start(command[:-2], len(shown))
        else:
            code, out, err = self.execute(command)
            failing = bool(shown) and shown[0].startswith("error:")
            assert (code != 0) == failing, (where, command, code, out, err)
            printed = err if failing else out
        return differences(shown, printed, same=self.same, where=f"{where}: $ {command}")

    def python(self, block: Block) -> list[str]:
        self.capsys.readouterr()
        code = compile("\n".join(block.body), block.where, "exec")
        exec(code, {"__name__": "__main__"})
        printed = self.capsys.readouterr().out.splitlines()
        if block.output is None:
            return []
        return differences(list(block.output), printed, same=self.same, where=block.where)

    def run(self, block: Block) -> list[str]:
        if block.language == "python":
            return self.python(block)
        found = []
        for command, shown in block.steps():
            found += self.step(command, shown, block.where)
        return found


@contextlib.contextmanager
def session(tmp_path: Path, monkeypatch, capsys, *, demo: Path | None = None):
    monkeypatch.chdir(tmp_path)
    running = Session(tmp_path, capsys, demo=demo)
    try:
        yield running
    finally:
        running.close()


TESTED = marked("test")
DEMO = marked("demo")


def test_every_example_is_marked():
    """Every console and python block says how it is run; marks sit only on those."""
    wrong = [
        f"{block.where}: ```{block.language} block "
        + ("without a mark" if block.kind is None else f"marked {block.kind!r}")
        for blocks in BLOCKS.values()
        for block in blocks
        if (block.language in RUN) != (block.kind in KINDS)
        or (block.kind is not None and block.kind not in KINDS)
    ]
    assert wrong == []
    assert ROOT / "README.md" in TESTED


@pytest.mark.parametrize("page", TESTED, ids=page_id)
def test_page_examples_print_what_they_show(page, tmp_path, monkeypatch, capsys):
    with session(tmp_path, monkeypatch, capsys) as running:
        found = [difference for block in TESTED[page] for difference in running.run(block)]
    assert found == []


@pytest.mark.slow
@pytest.mark.skipif(DEMO_OUT is None, reason="set LAPSV_DEMO_OUT to a finished `make demo` output")
@pytest.mark.parametrize("page", DEMO, ids=page_id)
def test_demo_examples_run_on_a_demo_output(page, tmp_path, monkeypatch, capsys):
    demo = Path(DEMO_OUT).resolve()
    assert (demo / "report.md").is_file(), f"{demo}: not a finished demo output (no report.md)"
    with session(tmp_path, monkeypatch, capsys, demo=demo) as running:
        found = [difference for block in DEMO[page] for difference in running.run(block)]
    assert found == []


def test_one_changed_digit_is_caught():
    """The comparison is exact at the printed precision: one digit edited fails."""
    command, expected = TESTED[ROOT / "README.md"][0].steps()[0]
    assert expected[0] == "cosine: 0.9273", command
    edited = [line.replace("0.9273", "0.9274") for line in expected]
    assert differences(edited, expected) != []
    assert differences(expected, expected) == []


def test_json_is_compared_to_its_tolerance():
    shown = '{"cosine":0.9272740483283997,"same":true,"name":"bob"}'
    assert exact_line(shown, '{"cosine":0.92727,"same":true,"name":"bob"}')
    assert not exact_line(shown, '{"cosine":0.9275,"same":true,"name":"bob"}')
    assert not exact_line(shown, '{"cosine":0.9272740483283997,"same":false,"name":"bob"}')


def test_demo_outputs_are_compared_without_their_numbers():
    """Another demo run changes numbers, ids and paths, never the words."""
    shown = "  klettres_hu   LLR   +4.350   cosine +0.891 [model lapsv-370cf92cd53a17e3]"
    other = "  klettres_hu   LLR  -12.726   cosine -0.008 [model lapsv-0123456789abcdef]"
    assert mask(shown) == mask(other)
    assert mask(shown) != mask(other.replace("klettres_hu", "asterisk_it"))
    assert mask("/home/me/lapsv-demo/corpus/a.flac") == mask("/tmp/x/lapsv-demo/corpus/a.flac")


def test_braces_expand_as_in_bash():
    assert words("lapsv x a_000{1,2}.flac 'b c'") == [
        "lapsv",
        "x",
        "a_0001.flac",
        "a_0002.flac",
        "b c",
    ]
