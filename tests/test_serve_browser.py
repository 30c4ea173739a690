"""The browser page of `lapsv serve` in headless Chromium, with Chromium's fake microphone
playing a bundled test clip: record, enrol, record again, verify -> "same"; then upload a
two-speaker conversation to "Who spoke when" -> a timeline of two speakers.

Slow (``make test-slow``). It needs a Chromium binary: ``$LAPSV_CHROMIUM``, else
``chromium`` / ``chromium-headless-shell`` on the PATH, else Debian's
``/usr/lib/chromium/chromium-headless-shell``. A binary unpacked from Debian packages with
``dpkg-deb -x`` into a folder (see docs/serving.md) finds its libraries in that folder's
``usr/lib/x86_64-linux-gnu``. Chromium is driven over its DevTools protocol on a pipe
(``--remote-debugging-pipe``): no port, no download. ``LAPSV_SCREENSHOT=PATH`` also saves
the page's screenshot there (docs/serve_page.png was made so).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks import serve_load  # noqa: E402

from test_serve_diarize import write_conversation  # noqa: E402

DATA = Path(__file__).parent / "data"
DEBIAN_BINARY = Path("/usr/lib/chromium/chromium-headless-shell")
STEP_SECONDS = 60.0  # the longest any step of the page may take


def chromium() -> Path | None:
    """The Chromium binary to use (see the module doc), or None."""
    if os.environ.get("LAPSV_CHROMIUM"):
        return Path(os.environ["LAPSV_CHROMIUM"])
    for name in ("chromium", "chromium-headless-shell", "chromium-browser"):
        if shutil.which(name):
            return Path(shutil.which(name))
    return DEBIAN_BINARY if DEBIAN_BINARY.exists() else None


def library_path(binary: Path) -> str:
    """LD_LIBRARY_PATH for a binary unpacked at ROOT/usr/lib/chromium/ (its libraries in
    ROOT/usr/lib/x86_64-linux-gnu), plus what the environment has."""
    usr = binary.resolve().parents[2] if binary.resolve().parent.name == "chromium" else None
    folders = []
    if usr is not None:
        libs = usr / "lib" / "x86_64-linux-gnu"
        folders = [str(p) for p in (libs, libs / "pulseaudio") if p.is_dir()]
    existing = os.environ.get("LD_LIBRARY_PATH")
    return ":".join(folders + ([existing] if existing else []))


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out;
    JSON messages separated by NUL bytes)."""

    def __init__(self, binary: Path, args: list[str], log: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._log = open(log, "wb")  # noqa: SIM115 (closed in close())

        def plumb() -> None:  # in the child: its fd 3 reads our commands, fd 4 answers
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        env = {**os.environ, "LD_LIBRARY_PATH": library_path(binary)}
        self.process = subprocess.Popen(
            [str(binary), *args],
            preexec_fn=plumb,
            close_fds=False,  # keep fds 3 and 4 (other fds of Python are not inheritable)
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and return its result (events are skipped)."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + STEP_SECONDS + 30
        while time.monotonic() < deadline:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._from_chrome], [], [], 1.0)
                if not ready:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{method}: no answer from Chromium")
                    continue
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe ({self.process.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
        raise TimeoutError(method)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        self._log.close()


WAIT = """new Promise((resolve, reject) => {
  const start = Date.now();
  (function poll() {
    const value = (%s)();
    if (value) return resolve(value);
    if (Date.now() - start > %d) {
      return reject(new Error("timed out; status: " + document.getElementById("status")
        .textContent + "; result: " + document.getElementById("result").textContent));
    }
    setTimeout(poll, 100);
  })();
})"""


def run_js(tools: DevTools, session: str, expression: str, *, wait: bool = False):
    """Evaluate ``expression`` in the page (``wait``: until it returns something truthy)."""
    if wait:
        expression = WAIT % (f"() => {expression}", int(STEP_SECONDS * 1000))
    result = tools.call(
        "Runtime.evaluate",
        session,
        expression=expression,
        awaitPromise=True,
        returnByValue=True,
        timeout=int((STEP_SECONDS + 10) * 1000),
    )
    if "exceptionDetails" in result:
        raise AssertionError(result["exceptionDetails"].get("exception", {}).get("description"))
    return result["result"].get("value")


def record(tools: DevTools, session: str) -> None:
    """Press Record and wait for the WAV the page makes of the recording."""
    run_js(tools, session, "document.getElementById('status').textContent = ''")
    run_js(tools, session, "document.getElementById('seconds').value = '4'")
    run_js(tools, session, "document.getElementById('record').click()")
    status = run_js(
        tools,
        session,
        "document.getElementById('status').textContent.startsWith('recorded') && "
        "document.getElementById('status').textContent",
        wait=True,
    )
    assert "microphone.wav" in status


def decision_after(tools: DevTools, session: str, button: str) -> str:
    run_js(tools, session, f"document.getElementById('{button}').click()")
    return run_js(
        tools,
        session,
        "!['', 'working'].includes(document.getElementById('decision').dataset.decision || "
        "'') && document.getElementById('decision').dataset.decision",
        wait=True,
    )


@contextlib.contextmanager
def page(binary: Path, url: str, clip: Path, folder: Path) -> Iterator[tuple[DevTools, str]]:
    """A headless Chromium whose microphone plays ``clip`` (a WAV file, in a loop), on the
    page at ``url``: (tools, session)."""
    folder.mkdir()
    args = [
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--remote-debugging-pipe",
        f"--user-data-dir={folder / 'profile'}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clip}",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=900,760",
        "about:blank",
    ]
    tools = DevTools(binary, args, folder / "chromium.log")
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tools.call("Page.navigate", session, url=url)
        run_js(tools, session, "document.getElementById('verify') !== null", wait=True)
        yield tools, session
    finally:
        tools.close()


def wav_of(clip: str, folder: Path) -> Path:
    """A bundled clip as 16-bit WAV, what Chromium's fake microphone plays."""
    samples, rate = soundfile.read(DATA / clip)
    path = folder / clip.replace(".flac", ".wav")
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


def verify_recording(tools: DevTools, session: str, key: str, name: str) -> tuple[str, str]:
    """Record, verify against ``name`` at threshold 0.8: (decision, result text)."""
    run_js(tools, session, f"document.getElementById('key').value = '{key}'")
    record(tools, session)
    run_js(tools, session, f"document.getElementById('verify-name').value = '{name}'")
    run_js(tools, session, "document.getElementById('threshold').value = '0.8'")
    decision = decision_after(tools, session, "verify")
    return decision, run_js(tools, session, "document.getElementById('result').textContent")


TIMELINE = """({
  blocks: [...document.querySelectorAll('#timeline .segment')].map((b) => ({
    speaker: b.dataset.speaker, colour: b.style.background, width: b.offsetWidth })),
  legend: [...document.querySelectorAll('#legend > span')].map((s) => s.dataset.speaker),
  rows: document.querySelectorAll('#segments tbody tr').length,
  result: document.getElementById('result').textContent,
})"""


def diarize_upload(tools: DevTools, session: str, path: Path) -> tuple[str, dict]:
    """Choose ``path`` in the "Who spoke when" file input and press its button:
    (decision, what the timeline, legend and table show)."""
    root = tools.call("DOM.getDocument", session)["root"]["nodeId"]
    node = tools.call("DOM.querySelector", session, nodeId=root, selector="#diarize-file")
    tools.call("DOM.setFileInputFiles", session, files=[str(path)], nodeId=node["nodeId"])
    decision = decision_after(tools, session, "diarize")
    return decision, run_js(tools, session, TIMELINE)


@pytest.mark.slow
def test_the_page_records_enrols_and_verifies_in_chromium(tmp_path):
    """Three browsers, three microphones: enrol speaker A's first clip, then verify A's
    second clip (same) and speaker B's (different) against it."""
    binary = chromium()
    if binary is None or not binary.exists():
        pytest.skip(
            "no Chromium binary: set LAPSV_CHROMIUM, or install Debian's chromium-headless-shell "
            "(docs/serving.md)"
        )
    clips = {clip: wav_of(clip, tmp_path) for clip in ("speaker_a_1.flac", "speaker_a_2.flac")}
    clips["speaker_b_1.flac"] = wav_of("speaker_b_1.flac", tmp_path)
    with serve_load.server(tmp_path / "server", args=["--threads", "1"]) as srv:
        url = f"{srv.url}/"
        with page(binary, url, clips["speaker_a_1.flac"], tmp_path / "enrol") as (tools, tab):
            run_js(tools, tab, f"document.getElementById('key').value = '{srv.admin_key}'")
            record(tools, tab)
            run_js(tools, tab, "document.getElementById('name').value = 'alice'")
            assert decision_after(tools, tab, "enroll") == "enrolled"
        with page(binary, url, clips["speaker_b_1.flac"], tmp_path / "other") as (tools, tab):
            other = verify_recording(tools, tab, srv.verify_key, "alice")
        with page(binary, url, clips["speaker_a_2.flac"], tmp_path / "same") as (tools, tab):
            same = verify_recording(tools, tab, srv.verify_key, "alice")
            shot = tools.call("Page.captureScreenshot", tab, format="png")["data"]
            write_conversation(tmp_path / "conversation.wav")
            spoke, shown = diarize_upload(tools, tab, tmp_path / "conversation.wav")
            refused = decision_after(tools, tab, "transcribe")  # a GE2E server: no words
            said = run_js(tools, tab, "document.getElementById('result').textContent")
            run_js(tools, tab, "document.getElementById('diarization').scrollIntoView()")
            timeline = tools.call("Page.captureScreenshot", tab, format="png")["data"]
    (tmp_path / "serve_diarize.png").write_bytes(base64.b64decode(timeline))
    png = base64.b64decode(shot)
    (tmp_path / "serve_page.png").write_bytes(png)
    if os.environ.get("LAPSV_SCREENSHOT"):
        Path(os.environ["LAPSV_SCREENSHOT"]).write_bytes(png)
    assert same[0] == "same" and "decision: SAME speaker" in same[1], same
    assert other[0] == "different" and "decision: DIFFERENT speakers" in other[1], other
    speakers = {block["speaker"] for block in shown["blocks"]}
    assert spoke == "2 speakers" and len(speakers) == 2, shown
    assert len({block["colour"] for block in shown["blocks"]}) == 2, shown  # one per speaker
    assert all(block["width"] > 0 for block in shown["blocks"]), shown
    assert set(shown["legend"]) == speakers and shown["rows"] == len(shown["blocks"]), shown
    assert refused == "error" and "this service cannot transcribe" in said, said
