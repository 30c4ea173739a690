"""Transcript writers: JSON, SubRip (.srt), WebVTT (.vtt) and plain text (.txt).

Every writer shows a speaker by its enrolled name when ``transcript.names`` maps its
label, and by the label otherwise; segments whose text is blank are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from lapsv.errors import ConfigError
from lapsv.files import atomic_write_text
from lapsv.transcription.transcript import Transcript, TranscriptSegment

FORMATS = ("json", "srt", "vtt", "txt")


def _milliseconds(seconds: float) -> int:
    """Seconds -> whole milliseconds, rounded, clamped at 0."""
    return max(0, round(seconds * 1000))


def _timestamp(ms: int, separator: str) -> str:
    """``HH:MM:SS<separator>mmm`` of a time in milliseconds (hours may exceed 99).

    >>> _timestamp(3725500, ",")
    '01:02:05,500'
    """
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    """Whitespace runs (line breaks included) -> single spaces, so a cue never breaks."""
    return " ".join(text.split())


def _cues(transcript: Transcript, separator: str) -> list[tuple[str, str | None, str]]:
    """(timing line, shown speaker or None, one-line text) per non-blank segment.

    The end is at least 1 ms after the start, so every cue is visible.
    """
    cues = []
    for seg in transcript.segments:
        text = _one_line(seg.text)
        if not text:
            continue
        start = _milliseconds(seg.start)
        end = max(_milliseconds(seg.end), start + 1)
        timing = f"{_timestamp(start, separator)} --> {_timestamp(end, separator)}"
        cues.append((timing, _speaker(transcript, seg), text))
    return cues


def _speaker(transcript: Transcript, seg: TranscriptSegment) -> str | None:
    """The enrolled name of the segment's speaker, else its label; None if unattributed."""
    if seg.speaker is None:
        return None
    return _one_line(transcript.names.get(seg.speaker, seg.speaker)) or seg.speaker


def to_srt(transcript: Transcript) -> str:
    """SubRip text: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, ``[speaker] text``.

    >>> t = Transcript("a", 2.0, "en", (TranscriptSegment(0.0, 1.5, " Hi.", "S0"),))
    >>> print(to_srt(t), end="")
    1
    00:00:00,000 --> 00:00:01,500
    [S0] Hi.
    """
    blocks = []
    for number, (timing, speaker, text) in enumerate(_cues(transcript, ","), start=1):
        line = text if speaker is None else f"[{speaker}] {text}"
        blocks.append(f"{number}\n{timing}\n{line}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    """Escape the characters WebVTT cue text reserves (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(transcript: Transcript) -> str:
    """WebVTT text: a ``WEBVTT`` header, cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` whose
    speaker is a voice tag ``<v speaker>text``; text and names are escaped.

    >>> t = Transcript("a", 2.0, "en", (TranscriptSegment(0.0, 1.5, " A & B", "S0"),))
    >>> print(to_vtt(t), end="")
    WEBVTT
    <BLANKLINE>
    00:00:00.000 --> 00:00:01.500
    <v S0>A &amp; B
    """
    blocks = ["WEBVTT\n"]
    for timing, speaker, text in _cues(transcript, "."):
        line = _vtt_escape(text)
        if speaker is not None:
            line = f"<v {_vtt_escape(speaker)}>{line}"
        blocks.append(f"{timing}\n{line}\n")
    return "\n".join(blocks)


def to_text(transcript: Transcript) -> str:
    """Plain text, one paragraph per speaker turn (consecutive segments of one speaker
    joined), ``speaker: text``; paragraphs separated by blank lines.

    >>> segs = (TranscriptSegment(0, 1, " Hi.", "S0"), TranscriptSegment(1, 2, " Yes.", "S0"))
    >>> to_text(Transcript("a", 2.0, "en", segs))
    'S0: Hi. Yes.\\n'
    """
    turns: list[tuple[str | None, list[str]]] = []
    for seg in transcript.segments:
        text = _one_line(seg.text)
        if not text:
            continue
        speaker = _speaker(transcript, seg)
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(text)
        else:
            turns.append((speaker, [text]))
    paragraphs = [
        " ".join(texts) if speaker is None else f"{speaker}: {' '.join(texts)}"
        for speaker, texts in turns
    ]
    return "\n\n".join(paragraphs) + "\n"


def to_json_text(transcript: Transcript) -> str:
    """The transcript's JSON record, indented, non-ASCII kept as is."""
    return json.dumps(transcript.to_json(), ensure_ascii=False, indent=2) + "\n"


def _writers() -> dict[str, Callable[[Transcript], str]]:
    """Format name -> writer (built per call: no module-level mutable state)."""
    return {"json": to_json_text, "srt": to_srt, "vtt": to_vtt, "txt": to_text}


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript as text in format ``fmt`` (one of FORMATS), or raise ConfigError."""
    writer = _writers().get(fmt)
    if writer is None:
        raise ConfigError(f"unknown transcript format {fmt!r}; choose from {', '.join(FORMATS)}")
    return writer(transcript)


def parse_formats(text: str) -> tuple[str, ...]:
    """Comma-separated format names -> a tuple without duplicates; ``all`` gives FORMATS.

    >>> parse_formats(" SRT, json,srt")
    ('srt', 'json')
    """
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    known = ", ".join(FORMATS)
    if not names:
        raise ConfigError(f"no transcript format given in {text!r}; choose from {known} or all")
    if "all" in names:
        return FORMATS
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown transcript format(s) {', '.join(unknown)}; choose from {known} or all"
        )
    return tuple(dict.fromkeys(names))


def write_transcript(transcript: Transcript, folder: Path, formats: Iterable[str]) -> list[Path]:
    """Write ``folder/<file_id>.<format>`` for each format (atomically, UTF-8).

    All format names are checked before anything is written. Returns the paths written.
    """
    chosen = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
    paths = []
    for fmt in chosen:
        path = Path(folder) / f"{transcript.file_id}.{fmt}"
        text = render(transcript, fmt)
        atomic_write_text(path, text)
        paths.append(path)
    return paths
