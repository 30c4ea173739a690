"""The transcript types: words and segments with times and speakers, one per recording."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Word:
    """One word: [start, end) seconds from the start of the recording, its text as the
    tokenizer gives it (with its leading space), and its speaker (None: not attributed)."""

    start: float
    end: float
    text: str
    speaker: str | None = None

    def to_json(self) -> dict:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "speaker": self.speaker,
        }


@dataclasses.dataclass(frozen=True)
class TranscriptSegment:
    """One timestamped stretch of the decoder's output (Whisper's segment), its speaker
    (the one who covers most of it; None: nobody does) and its words (empty without word
    timestamps)."""

    start: float
    end: float
    text: str
    speaker: str | None = None
    words: tuple[Word, ...] = ()

    def to_json(self) -> dict:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "speaker": self.speaker,
            "text": self.text.strip(),
            "words": [w.to_json() for w in self.words],
        }

    @classmethod
    def from_json(cls, record: dict) -> TranscriptSegment:
        words = tuple(
            Word(w["start"], w["end"], w["text"], w.get("speaker")) for w in record["words"]
        )
        return cls(record["start"], record["end"], record["text"], record.get("speaker"), words)


@dataclasses.dataclass(frozen=True)
class Transcript:
    """Who said what in one recording: segments in time order, the decoding language,
    the enrolled names of speaker labels, and the seconds spent in each stage."""

    file_id: str
    duration: float
    language: str
    segments: tuple[TranscriptSegment, ...]
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # label -> enrolled name
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> run time

    @property
    def speakers(self) -> list[str]:
        """The speakers, in order of first appearance (unattributed segments left out)."""
        return list(dict.fromkeys(s.speaker for s in self.segments if s.speaker is not None))

    @property
    def text(self) -> str:
        """The words alone, segments joined by single spaces."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_json(self) -> dict:
        return {
            "file": self.file_id,
            "duration": round(self.duration, 3),
            "language": self.language,
            "speakers": self.speakers,
            "names": self.names,
            "segments": [s.to_json() for s in self.segments],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, record: dict) -> Transcript:
        return cls(
            record["file"],
            record["duration"],
            record["language"],
            tuple(TranscriptSegment.from_json(s) for s in record["segments"]),
            dict(record.get("names", {})),
            dict(record.get("seconds", {})),
        )
