"""Check a manifest before training: every problem in one report, in seconds.

Only file headers are read (``soundfile.info``, in parallel threads), never the audio, so
a corpus of a million files is checked in minutes instead of failing hours into training.
The checks: missing and unreadable files, duplicate utterance ids, sample rates other
than the expected one, audio shorter than a minimum (the training crop, or less: training
repeats shorter utterances to fill a crop), and speakers left with too few utterances.
:meth:`ValidationReport.valid_manifest` drops every bad item (and the speakers that then
have too few utterances) for ``data.drop_invalid`` / ``--drop-invalid``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile

from lapsv.audio import SAMPLE_RATE
from lapsv.data.manifest import Manifest, read_manifest
from lapsv.errors import LapsvError

# Problem kinds, in report order, with their headings.
KINDS = {
    "missing": "missing files",
    "unreadable": "unreadable files",
    "duplicate": "duplicate utterance ids",
    "sample_rate": "wrong sample rates",
    "too_short": "audio too short",
    "too_few": "speakers with too few utterances",
}
SHOWN_IN_ERRORS = 50  # problems listed in an exception message (the report file has all)


class DataError(LapsvError, ValueError):
    """Training data has problems; the message lists them and how to proceed."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its kind (a key of KINDS), the utterance (or speaker) and what is wrong."""

    kind: str
    item: str
    detail: str

    def format(self) -> str:
        return f"{self.item}: {self.detail}"


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate_manifest` found.

    ``bad`` holds the manifest positions of the utterances :meth:`valid_manifest` drops;
    ``durations`` the header duration of every utterance (None if unreadable).
    """

    source: str
    manifest: Manifest
    problems: list[Problem]
    bad: frozenset[int]
    seconds: float
    durations: tuple[float | None, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        counter = Counter(p.kind for p in self.problems)
        return {kind: counter[kind] for kind in KINDS if counter[kind]}

    def summary(self) -> str:
        n = len(self.manifest)
        if self.ok:
            return f"{self.source}: {n} utterances, no problems (checked in {self.seconds:.1f} s)"
        parts = ", ".join(f"{count} {KINDS[kind]}" for kind, count in self.counts().items())
        return (
            f"{self.source}: {len(self.problems)} problem(s) in {n} utterances: {parts}; "
            f"{len(self.bad)} utterance(s) would be dropped (checked in {self.seconds:.1f} s)"
        )

    def format(self, limit: int | None = None) -> str:
        """The summary, then every problem grouped by kind (the first ``limit`` if given)."""
        lines = [self.summary()]
        shown = 0
        for kind, heading in KINDS.items():
            of_kind = [p for p in self.problems if p.kind == kind]
            if not of_kind:
                continue
            if limit is not None and shown >= limit:
                break
            lines.append(f"{heading} ({len(of_kind)}):")
            for problem in of_kind:
                if limit is not None and shown >= limit:
                    break
                lines.append(f"  {problem.format()}")
                shown += 1
        if limit is not None and shown < len(self.problems):
            lines.append(f"... and {len(self.problems) - shown} more")
        return "\n".join(lines)

    def valid_manifest(self) -> Manifest:
        """The manifest without the bad utterances."""
        kept = tuple(u for i, u in enumerate(self.manifest.utterances) if i not in self.bad)
        return Manifest(self.manifest.root, kept)


def validate_manifest(
    manifest: Manifest | str | Path,
    *,
    crop_seconds: float | None = None,
    min_utterances: int = 1,
    sample_rate: int | None = SAMPLE_RATE,
    workers: int | None = None,
) -> ValidationReport:
    """Check every utterance of ``manifest`` by its file header.

    Args:
        manifest: a manifest or the path of one.
        crop_seconds: report audio shorter than this (say the training crop).
        min_utterances: report speakers with fewer good utterances than this.
        sample_rate: report files at another rate (``None``: any rate; lapsv resamples).
        workers: threads reading headers (default: enough for network file systems).

    >>> import tempfile
    >>> from lapsv.data.manifest import Utterance, write_manifest
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_manifest(folder / "m.tsv", [Utterance("a.wav", "s1", 1.0)], root=folder)
    >>> print(validate_manifest(folder / "m.tsv").format())  # doctest: +ELLIPSIS
    /.../m.tsv: 1 problem(s) in 1 utterances: 1 missing files; 1 utterance(s) would be dropped...
    missing files (1):
      a.wav: no such file: /.../a.wav
    """
    started = time.perf_counter()
    source = "<manifest>"
    if not isinstance(manifest, Manifest):
        source = str(manifest)
        manifest = read_manifest(manifest)
    utterances = manifest.utterances
    paths = [manifest.audio_path(u) for u in utterances]
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        headers = list(pool.map(_header, paths, chunksize=64))

    problems: list[Problem] = []
    bad: set[int] = set()
    first_row: dict[str, int] = {}
    for index, (utterance, path, header) in enumerate(zip(utterances, paths, headers, strict=True)):
        kind, detail = _file_problem(path, header, sample_rate, crop_seconds)
        if utterance.utt in first_row:
            kind, detail = (
                "duplicate",
                (
                    f"also in row {first_row[utterance.utt] + 1} of the manifest (this is row "
                    f"{index + 1}); utterance ids must be unique"
                ),
            )
        else:
            first_row[utterance.utt] = index
        if kind is not None:
            problems.append(Problem(kind, utterance.utt, detail))
            bad.add(index)

    if min_utterances > 1:
        good_counts = Counter(u.speaker for i, u in enumerate(utterances) if i not in bad)
        for speaker in sorted(good_counts):
            if good_counts[speaker] < min_utterances:
                problems.append(
                    Problem(
                        "too_few",
                        speaker,
                        f"{good_counts[speaker]} usable utterance(s), fewer than "
                        f"{min_utterances} (data.min_utterances)",
                    )
                )
                bad.update(i for i, u in enumerate(utterances) if u.speaker == speaker)
    order = {kind: n for n, kind in enumerate(KINDS)}
    problems.sort(key=lambda p: order[p.kind])
    durations = tuple(
        h.frames / h.samplerate if not isinstance(h, str | None) and h.samplerate > 0 else None
        for h in headers
    )
    return ValidationReport(
        source, manifest, problems, frozenset(bad), time.perf_counter() - started, durations
    )


def _header(path: Path) -> soundfile._SoundFileInfo | str | None:
    """The file's header info; an error message if unreadable; None if missing."""
    if not path.is_file():
        return None
    try:
        return soundfile.info(str(path))
    except Exception as error:  # any reason a header cannot be read is a problem to report
        return f"{type(error).__name__}: {error}".strip()


def _file_problem(
    path: Path,
    header: soundfile._SoundFileInfo | str | None,
    sample_rate: int | None,
    crop_seconds: float | None,
) -> tuple[str | None, str]:
    if header is None:
        return "missing", f"no such file: {path}"
    if isinstance(header, str):
        return "unreadable", f"cannot read the audio header of {path} ({header})"
    if header.frames <= 0 or header.samplerate <= 0:
        return "unreadable", f"{path} holds no audio"
    if sample_rate is not None and header.samplerate != sample_rate:
        return "sample_rate", f"{header.samplerate} Hz, expected {sample_rate} Hz ({path})"
    seconds = header.frames / header.samplerate
    if crop_seconds is not None and seconds < crop_seconds:
        return "too_short", f"{seconds:.2f} s, shorter than {crop_seconds:g} s ({path})"
    return None, ""
