"""How well a transcript's speakers match a reference: the speaker error of the words.

For each recording, the time of every transcript word (or segment, without word times)
that overlaps a reference speaker is counted per (hypothesis label, reference speaker);
labels map one-to-one to reference speakers so that the most time agrees (the Hungarian
algorithm, scipy's ``linear_sum_assignment``), and the speaker error is the share of that
time whose label maps to another speaker or to none. Time outside reference speech (pauses
held by a word, words the reference does not have) is not counted: this scores who said
it, not what or when.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from lapsv.diarization.segments import Segment
from lapsv.transcription.attribution import SpeakerTimeline
from lapsv.transcription.transcript import Transcript


@dataclasses.dataclass(frozen=True)
class SpeakerError:
    """Seconds of transcribed reference speech, and of it attributed to the wrong speaker."""

    seconds: float
    wrong: float

    @property
    def percent(self) -> float:
        return 100.0 * self.wrong / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "speaker error %": round(self.percent, 2),
            "seconds": round(self.seconds, 3),
            "wrong seconds": round(self.wrong, 3),
        }


def speaker_error(
    transcripts: Mapping[str, Transcript], references: Mapping[str, Sequence[Segment]]
) -> tuple[SpeakerError, dict[str, SpeakerError]]:
    """(overall, per recording) speaker error of the transcripts named in ``references``.

    >>> from lapsv.transcription.transcript import TranscriptSegment
    >>> hyp = Transcript("c", 4.0, "en", (TranscriptSegment(0.0, 2.0, " hi", "S1"),
    ...     TranscriptSegment(2.0, 4.0, " yes", "S1")))
    >>> ref = [Segment(0.0, 2.0, "ann"), Segment(2.0, 3.0, "bob")]
    >>> speaker_error({"c": hyp}, {"c": ref})[0].to_json()
    {'speaker error %': 33.33, 'seconds': 3.0, 'wrong seconds': 1.0}
    """
    per_file = {}
    for file_id, transcript in transcripts.items():
        if file_id in references:
            per_file[file_id] = _one(transcript, references[file_id])
    seconds = sum(e.seconds for e in per_file.values())
    wrong = sum(e.wrong for e in per_file.values())
    return SpeakerError(seconds, wrong), per_file


def _one(transcript: Transcript, reference: Sequence[Segment]) -> SpeakerError:
    timeline = SpeakerTimeline(reference)
    labels: dict[str | None, int] = {}
    speakers: dict[str, int] = {}
    cells: dict[tuple[int, int], float] = {}
    for segment in transcript.segments:
        items = segment.words or (segment,)
        for item in items:
            label = labels.setdefault(item.speaker, len(labels))
            for speaker, time in timeline.coverage(item.start, item.end).items():
                key = (label, speakers.setdefault(speaker, len(speakers)))
                cells[key] = cells.get(key, 0.0) + time
    if not cells:
        return SpeakerError(0.0, 0.0)
    agreement = np.zeros((len(labels), len(speakers)))
    for (label, speaker), time in cells.items():
        agreement[label, speaker] = time
    if None in labels:  # an unattributed item maps to nobody
        agreement[labels[None]] = 0.0
    rows, cols = linear_sum_assignment(agreement, maximize=True)
    total = float(sum(cells.values()))
    return SpeakerError(total, total - float(agreement[rows, cols].sum()))
