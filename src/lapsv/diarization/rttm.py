"""RTTM files (NIST Rich Transcription Time Marked): read, validate, write.

One line per speaker turn, ten space-separated fields::

    SPEAKER <file-id> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>

onset and duration in seconds. Only ``SPEAKER`` lines are read; blank lines and lines
starting with ``#`` or ``;;`` are skipped; any other malformed line is an
:class:`RTTMError` naming the file and the line number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from lapsv.diarization.segments import Segment
from lapsv.errors import LapsvError
from lapsv.files import atomic_write_text

FIELDS = 10
RTTM_SUFFIX = ".rttm"


class RTTMError(LapsvError, ValueError):
    """A reference RTTM cannot be used; the message names the file, line and fix."""


def format_rttm(file_id: str, segments: Iterable[Segment]) -> str:
    """RTTM text of one recording's segments, in time order.

    >>> print(format_rttm("call1", [Segment(0.5, 2.0, "SPEAKER_00")]), end="")
    SPEAKER call1 1 0.500 1.500 <NA> <NA> SPEAKER_00 <NA> <NA>
    """
    _check_token(file_id, "file id")
    lines = []
    for seg in sorted(segments):
        speaker = seg.speaker.replace(" ", "_")
        _check_token(speaker, "speaker label")
        lines.append(
            f"SPEAKER {file_id} 1 {seg.start:.3f} {seg.duration:.3f} <NA> <NA> {speaker} "
            "<NA> <NA>\n"
        )
    return "".join(lines)


def write_rttm(path: str | Path, recordings: Mapping[str, Iterable[Segment]]) -> Path:
    """Write file id -> segments as one RTTM file (atomically)."""
    text = "".join(format_rttm(file_id, segs) for file_id, segs in recordings.items())
    atomic_write_text(Path(path), text)
    return Path(path)


def _check_token(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"an RTTM {what} must be non-empty with no spaces, got {value!r}")


def read_rttm(path: str | Path) -> dict[str, list[Segment]]:
    """File id -> its segments (sorted), from one RTTM file; RTTMError on a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RTTMError(f"{path}: cannot read the RTTM file ({error})") from error
    recordings: dict[str, list[Segment]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";;")):
            continue
        file_id, segment = _parse_line(stripped, f"{path}:{number}")
        if segment is not None:
            recordings.setdefault(file_id, []).append(segment)
    return {file_id: sorted(segs) for file_id, segs in recordings.items()}


def _parse_line(line: str, where: str) -> tuple[str, Segment | None]:
    fields = line.split()
    if fields[0] != "SPEAKER":
        if fields[0].isupper() and len(fields) >= 5:  # SPKR-INFO, LEXEME, ...: other types
            return fields[1], None
        raise RTTMError(f"{where}: not an RTTM line (expected 'SPEAKER <file> 1 <onset> ...')")
    if len(fields) < 8:
        raise RTTMError(
            f"{where}: an RTTM SPEAKER line has {FIELDS} fields "
            "(SPEAKER file 1 onset duration <NA> <NA> speaker <NA> <NA>), "
            f"this one has {len(fields)}"
        )
    try:
        onset, duration = float(fields[3]), float(fields[4])
    except ValueError:
        raise RTTMError(
            f"{where}: onset and duration must be seconds, got {fields[3]!r} {fields[4]!r}"
        ) from None
    if not (math.isfinite(onset) and math.isfinite(duration)) or onset < 0 or duration < 0:
        raise RTTMError(f"{where}: onset {fields[3]} and duration {fields[4]} must be >= 0")
    return fields[1], Segment(onset, onset + duration, fields[7])


def read_references(source: str | Path, file_ids: Iterable[str]) -> dict[str, list[Segment]]:
    """Reference segments of ``file_ids`` from one RTTM file or a folder of ``<id>.rttm``.

    Raises RTTMError when the reference names none of the inputs (the message lists a few
    ids of each side); inputs it does not name are left out of the result.
    """
    source = Path(source)
    wanted = list(file_ids)
    if source.is_dir():
        found: dict[str, list[Segment]] = {}
        for path in sorted(source.glob(f"*{RTTM_SUFFIX}")):
            for file_id, segs in read_rttm(path).items():
                found.setdefault(file_id, []).extend(segs)
    elif source.is_file():
        found = read_rttm(source)
    else:
        raise RTTMError(f"{source}: no such reference RTTM file or folder")
    chosen = {file_id: sorted(found[file_id]) for file_id in wanted if file_id in found}
    if not chosen:
        raise RTTMError(
            f"{source}: the reference names none of the inputs (it has {_few(found)}, "
            f"the inputs are {_few(wanted)}); an RTTM file id is the audio file's stem"
        )
    return chosen


def _few(ids: Iterable[str], limit: int = 3) -> str:
    ids = list(ids)
    if not ids:
        return "no SPEAKER lines"
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
