"""Audio folders built once: atomic, with a marker recording the settings they were built with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import soundfile

from lapsv.files import atomic_directory

MARKER = ".complete"


def build_audio_folder(folder: Path, settings: dict, build: Callable[[Path], dict]) -> dict:
    """Build an audio ``folder`` atomically with ``build(tmp) -> summary`` unless its marker
    records the same settings; returns the summary with file count, minutes and size."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    marker = folder / MARKER
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings:
            return dict(done["summary"], skipped=True)
    started = time.perf_counter()
    with atomic_directory(folder) as tmp:
        summary = build(tmp)
        seconds = sum(soundfile.info(str(p)).duration for p in tmp.iterdir() if p.is_file())
        summary = {
            "files": sum(1 for p in tmp.iterdir() if p.is_file()),
            "minutes": round(seconds / 60, 2),
            "megabytes": round(sum(p.stat().st_size for p in tmp.iterdir()) / 2**20, 1),
            **summary,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MARKER).write_text(json.dumps({"settings": settings, "summary": summary}))
    return dict(summary, skipped=False)
