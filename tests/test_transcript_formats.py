"""Transcript writers: SRT and VTT parse back strictly, text merges turns, JSON round-trips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lapsv.errors import ConfigError
from lapsv.transcription.formats import (
    FORMATS,
    parse_formats,
    render,
    to_json_text,
    to_srt,
    to_text,
    to_vtt,
    write_transcript,
)
from lapsv.transcription.transcript import Transcript, TranscriptSegment, Word

SRT_TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
VTT_TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")
NAME = "Ζωή 李 O'Brien"  # a name in several scripts: shown whole, never stripped


def make_transcript() -> Transcript:
    """Two speakers (one enrolled by name), one unattributed segment, one with markup."""
    segments = (
        TranscriptSegment(
            1.2344,
            2.5006,
            " Hello there.",
            "SPEAKER_00",
            (Word(1.2344, 1.8, " Hello", "SPEAKER_00"), Word(1.8, 2.5006, " there.", None)),
        ),
        TranscriptSegment(2.5006, 4.0, " Still me.", "SPEAKER_00"),
        TranscriptSegment(4.0, 6.75, " We sell <b> & co", "SPEAKER_01"),
        TranscriptSegment(6.75, 9.1, " Background voice.", None),
    )
    return Transcript(
        "call-1",
        9.5,
        "en",
        segments,
        names={"SPEAKER_00": NAME},
        seconds={"decode": 0.25},
    )


def _ms(groups: tuple[str, ...]) -> int:
    hours, minutes, seconds, millis = (int(g) for g in groups)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def parse_srt(text: str) -> list[tuple[int, int, str]]:
    """A strict SubRip reader: (start ms, end ms, text) per cue; fails on any deviation."""
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    cues = []
    for number, block in enumerate(text.rstrip("\n").split("\n\n"), start=1):
        lines = block.split("\n")
        assert len(lines) == 3, block
        assert lines[0] == str(number)
        timing = SRT_TIMING.match(lines[1])
        assert timing, lines[1]
        start, end = _ms(timing.groups()[:4]), _ms(timing.groups()[4:])
        assert start < end
        assert lines[2] and lines[2] == lines[2].strip()
        cues.append((start, end, lines[2]))
    return cues


def parse_vtt(text: str) -> list[tuple[int, int, str]]:
    """A strict WebVTT reader for what the writer produces: header, then timing + one line."""
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for block in text[len("WEBVTT\n\n") :].rstrip("\n").split("\n\n"):
        timing_line, payload = block.split("\n")
        timing = VTT_TIMING.match(timing_line)
        assert timing, timing_line
        start, end = _ms(timing.groups()[:4]), _ms(timing.groups()[4:])
        assert start < end
        assert "-->" not in payload
        cues.append((start, end, payload))
    return cues


def test_srt_parses_back_with_segment_times_and_speakers():
    transcript = make_transcript()
    cues = parse_srt(to_srt(transcript))
    assert [(start, end) for start, end, _ in cues] == [
        (round(s.start * 1000), round(s.end * 1000)) for s in transcript.segments
    ]
    assert [(start, end) for start, end, _ in cues][:2] == [(1234, 2501), (2501, 4000)]
    assert [line for _, _, line in cues] == [
        f"[{NAME}] Hello there.",
        f"[{NAME}] Still me.",
        "[SPEAKER_01] We sell <b> & co",
        "Background voice.",
    ]


def test_hour_long_times_are_formatted():
    segment = TranscriptSegment(3725.5, 36000.0 + 7.25, " Late.", "SPEAKER_00")
    transcript = Transcript("long", 36010.0, "en", (segment,))
    assert "01:02:05,500 --> 10:00:07,250\n" in to_srt(transcript)
    assert "01:02:05.500 --> 10:00:07.250\n" in to_vtt(transcript)


def test_degenerate_times_give_visible_cues_and_blank_segments_are_skipped():
    segments = (
        TranscriptSegment(-0.5, -0.1, " Before zero.", "A"),
        TranscriptSegment(2.0, 2.0, " Empty span.", "A"),
        TranscriptSegment(3.0, 2.5, " Backwards.", None),
        TranscriptSegment(4.0, 5.0, "   \n ", "B"),
        TranscriptSegment(5.0, 5.0004, " Rounds to zero.\nTwo lines.", "B"),
    )
    transcript = Transcript("odd", 6.0, "en", segments)
    cues = parse_srt(to_srt(transcript))
    assert [(start, end) for start, end, _ in cues] == [
        (0, 1),
        (2000, 2001),
        (3000, 3001),
        (5000, 5001),
    ]
    assert cues[-1][2] == "[B] Rounds to zero. Two lines."
    assert len(parse_vtt(to_vtt(transcript))) == 4


def test_vtt_header_timing_and_escaping():
    transcript = make_transcript()
    text = to_vtt(transcript)
    cues = parse_vtt(text)
    assert [(start, end) for start, end, _ in cues] == [
        (round(s.start * 1000), round(s.end * 1000)) for s in transcript.segments
    ]
    assert [payload for _, _, payload in cues] == [
        f"<v {NAME}>Hello there.",
        f"<v {NAME}>Still me.",
        "<v SPEAKER_01>We sell &lt;b&gt; &amp; co",
        "Background voice.",
    ]
    assert "<b>" not in text


def test_vtt_escapes_the_speaker_name():
    segment = TranscriptSegment(0.0, 1.0, " Hi.", "S")
    transcript = Transcript("x", 1.0, "en", (segment,), names={"S": "A&B <Ltd>"})
    assert parse_vtt(to_vtt(transcript))[0][2] == "<v A&amp;B &lt;Ltd&gt;>Hi."


def test_name_replaces_label_everywhere_and_label_stays_in_json():
    transcript = make_transcript()
    for fmt in ("srt", "vtt", "txt"):
        text = render(transcript, fmt)
        assert NAME in text
        assert "SPEAKER_00" not in text
        assert "SPEAKER_01" in text
    record = json.loads(to_json_text(transcript))
    assert record["segments"][0]["speaker"] == "SPEAKER_00"
    assert record["names"] == {"SPEAKER_00": NAME}


def test_text_merges_consecutive_segments_of_one_speaker():
    transcript = make_transcript()
    assert to_text(transcript) == (
        f"{NAME}: Hello there. Still me.\n\nSPEAKER_01: We sell <b> & co\n\nBackground voice.\n"
    )
    segments = (
        TranscriptSegment(0, 1, " One.", "A"),
        TranscriptSegment(1, 2, " Two.", "B"),
        TranscriptSegment(2, 3, " Three.", "A"),
    )
    paragraphs = to_text(Transcript("x", 3.0, "en", segments)).rstrip("\n").split("\n\n")
    assert paragraphs == ["A: One.", "B: Two.", "A: Three."]


def test_json_round_trip():
    transcript = make_transcript()
    text = to_json_text(transcript)
    assert text.endswith("}\n")
    assert NAME in text  # ensure_ascii=False: the name is stored as written
    back = Transcript.from_json(json.loads(text))
    assert back.to_json() == transcript.to_json()
    assert to_json_text(back) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("json", ("json",)),
        ("json,srt", ("json", "srt")),
        (" SRT , Json,srt,json ", ("srt", "json")),
        ("vtt,,txt,", ("vtt", "txt")),
        ("all", FORMATS),
        ("ALL", FORMATS),
        ("srt,all", FORMATS),
    ],
)
def test_parse_formats(text, expected):
    assert parse_formats(text) == expected


@pytest.mark.parametrize("text", ["", " ", ",", "docx", "json,docx", "srt;vtt"])
def test_parse_formats_errors_name_the_known_formats(text):
    with pytest.raises(ConfigError) as error:
        parse_formats(text)
    for fmt in FORMATS:
        assert fmt in str(error.value)


def test_render_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="json, srt, vtt, txt"):
        render(make_transcript(), "docx")


def test_write_transcript_writes_every_format_atomically(tmp_path: Path):
    transcript = make_transcript()
    folder = tmp_path / "out"
    paths = write_transcript(transcript, folder, FORMATS)
    assert paths == [folder / f"call-1.{fmt}" for fmt in FORMATS]
    for path, fmt in zip(paths, FORMATS, strict=True):
        assert path.read_text(encoding="utf-8") == render(transcript, fmt)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
    again = write_transcript(transcript, folder, "srt,srt")
    assert again == [folder / "call-1.srt"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)


def test_write_transcript_checks_formats_before_writing(tmp_path: Path):
    with pytest.raises(ConfigError):
        write_transcript(make_transcript(), tmp_path, ["srt", "docx"])
    assert list(tmp_path.iterdir()) == []
