"""Who said it: each transcript segment and word gets the diarization speaker who covers
most of its time (the nearest speaker when none covers any of it).

A word is known by its start (the decoder's cross-attention alignment); it is taken to
end where the next word starts, so it holds the pause after it. Its speaker is the one
who covers most of its first :data:`WORD_CORE` seconds, not of the pause.

A segment whose words belong to different speakers is split at each change, so a line
of a subtitle never mixes two voices. Lookups bisect the diarization's segments (time
order, never overlapping): linear in the words and segments, whatever their number.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

from lapsv.diarization.segments import Segment
from lapsv.transcription.transcript import TranscriptSegment, Word

WORD_CORE = 0.3  # seconds from a word's start that decide its speaker


class SpeakerTimeline:
    """The speaker segments of one recording, for time-span lookups.

    >>> timeline = SpeakerTimeline([Segment(0.0, 2.0, "A"), Segment(2.0, 5.0, "B")])
    >>> timeline.speaker(1.5, 3.0), timeline.speaker(6.0, 7.0), timeline.speaker(0.5, 1.0)
    ('B', 'B', 'A')
    """

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = sorted(segments)
        self.starts = [s.start for s in self.segments]
        self.ends = [s.end for s in self.segments]
        # running maximum of the ends (and where it is), to bisect even over overlaps
        self.latest_end: list[float] = []
        self.latest_index: list[int] = []
        for index, end in enumerate(self.ends):
            if not self.latest_end or end > self.latest_end[-1]:
                self.latest_end.append(end)
                self.latest_index.append(index)
            else:
                self.latest_end.append(self.latest_end[-1])
                self.latest_index.append(self.latest_index[-1])

    def speaker(self, start: float, end: float) -> str | None:
        """The speaker with the most time in [start, end), else the nearest one in time;
        None when the timeline is empty."""
        if not self.segments:
            return None
        covered = self.coverage(start, end)
        if covered:
            return max(covered, key=covered.__getitem__)  # a tie: the first to speak in it
        return self._nearest(start, end)

    def coverage(self, start: float, end: float) -> dict[str, float]:
        """Seconds of each speaker inside [start, end) (speakers absent from it left out)."""
        first = bisect.bisect_right(self.latest_end, start)  # segments ending after start
        covered: dict[str, float] = {}
        for segment in self.segments[first:]:
            if segment.start >= end:
                break
            time = min(end, segment.end) - max(start, segment.start)
            if time > 0:
                covered[segment.speaker] = covered.get(segment.speaker, 0.0) + time
        return covered

    def _nearest(self, start: float, end: float) -> str:
        after = bisect.bisect_left(self.starts, end)
        candidates = []
        if after < len(self.segments):
            candidates.append((self.segments[after].start - end, self.segments[after].speaker))
        before = bisect.bisect_right(self.latest_end, start) - 1
        if before >= 0:
            latest = self.latest_index[before]
            candidates.append((start - self.ends[latest], self.segments[latest].speaker))
        return min(candidates)[1]


def attribute(
    segments: Sequence[TranscriptSegment], speakers: Sequence[Segment]
) -> list[TranscriptSegment]:
    """Segments with speakers (words too), split where the words' speaker changes."""
    timeline = SpeakerTimeline(speakers)
    out: list[TranscriptSegment] = []
    for segment in segments:
        if not segment.words:
            speaker = timeline.speaker(segment.start, segment.end)
            out.append(dataclasses.replace(segment, speaker=speaker))
            continue
        words = [
            dataclasses.replace(w, speaker=timeline.speaker(w.start, _core_end(w)))
            for w in segment.words
        ]
        out.extend(_split_by_speaker(segment, words))
    return out


def _core_end(word: Word) -> float:
    return min(max(word.end, word.start + 1e-3), word.start + WORD_CORE)


def _split_by_speaker(segment: TranscriptSegment, words: list[Word]) -> list[TranscriptSegment]:
    """One segment per run of consecutive words of one speaker."""
    runs: list[list[Word]] = []
    for word in words:
        if runs and runs[-1][-1].speaker == word.speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    if len(runs) == 1:
        return [dataclasses.replace(segment, speaker=words[0].speaker, words=tuple(words))]
    parts = []
    for number, run in enumerate(runs):
        start = segment.start if number == 0 else run[0].start
        end = segment.end if number == len(runs) - 1 else run[-1].end
        text = "".join(w.text for w in run)
        parts.append(TranscriptSegment(start, end, text, run[0].speaker, tuple(run)))
    return parts
