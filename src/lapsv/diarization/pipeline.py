"""``diarize``: who spoke when in one recording, with any lapsv model.

audio -> Silero VAD (speech regions, :mod:`~lapsv.diarization.speech`) -> windows (1.5 s
every 0.75 s, and the 2 and 3 s ones nearest them) -> embeddings through the
:class:`~lapsv.speaker.Speaker` facade -> clustering of their multi-scale affinity
(spectral with the eigen-gap count, or average linkage at a threshold) -> Viterbi
resegmentation -> segments -> names from a speaker database.

A file is read twice as a stream of 30 s blocks (VAD, then the windows), never whole, so a
recording of hours runs in bounded memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lapsv.audio import SAMPLE_RATE
from lapsv.diarization.clustering import (
    SpeakerCount,
    agglomerative_clusters,
    multiscale_affinity,
    smooth_windows,
    spectral_clusters,
    viterbi_resegmentation,
)
from lapsv.diarization.embedding import (
    EMBEDDING_PASSES,
    shared_pass_embeddings,
    window_embeddings,
)
from lapsv.diarization.segments import Segment, clip_segments, windows_to_segments
from lapsv.diarization.speech import Progress, find_speech
from lapsv.diarization.vad import SileroVAD, VADOptions
from lapsv.diarization.windows import ScaledWindows, bridged_regions, scaled_windows
from lapsv.errors import ConfigError
from lapsv.identification import identify_embeddings
from lapsv.model import SpeakerModel
from lapsv.scoring.norm import center_and_normalize, embedding_mean
from lapsv.scoring.state import score_pairs
from lapsv.speaker import Speaker
from lapsv.speakers import SpeakerDB

CLUSTERINGS = ("spectral", "ahc")
CENTRINGS = ("recording", "training")


@dataclasses.dataclass(frozen=True)
class DiarizeOptions:
    """Every choice of :func:`diarize` (the CLI flags have the same names).

    num_speakers / min_speakers / max_speakers: the speaker count, fixed or bounded.
    clustering: ``spectral`` (eigen-gap count) or ``ahc`` (average linkage at a threshold:
        ``threshold`` as a cosine, else the model's calibrated LLR 0).
    p: share of each window's most similar windows kept by spectral p-pruning (None:
        chosen per recording, NME-SC).
    centring: the mean subtracted from the length-normalised embeddings before cosines:
        ``recording`` (the mean of the recording's own windows, as Kaldi's x-vector
        diarization centres each recording; a recording of one or two windows takes the
        training mean) or ``training`` (the model's training mean).
    smoothing: each window's embedding is averaged with this many neighbours on each
        side within its speech region (0: none).
    window, hop: embedding window length and step (seconds).
    long_windows: longer windows (seconds, same hop) embedded as well: each window's
        cosines are averaged with those of the nearest longer windows before clustering
        (NeMo's multi-scale affinity), which finds the speaker count more often; the
        segments keep ``window``'s resolution and the resegmentation uses ``window``'s
        embeddings. Empty: one scale.
    window_bridge: windows are laid over the speech regions joined across pauses shorter
        than this (seconds), so that a window holds the words around a short pause; the
        segments are then cut back to the speech regions (0: windows inside each region).
    min_segment: shorter segments are dropped (seconds).
    resegment, switch_penalty: after clustering, re-assign the windows to the cluster
        means by Viterbi decoding, paying ``switch_penalty`` (in cosine) for each change of
        speaker between touching windows (0: each window's nearest mean).
    embedding_pass: ``window`` (each window alone) or ``shared`` (one frontend pass per
        30 s block, windows pooled from it; trained lapsv models only).
    vad: Silero VAD options, chosen on conversations of the demo's validation and
        training voices: a frame is speech above a probability of 0.3 unless it is 20 dB
        below the recording's loud speech (the energy gate) or under 0.35 of the way from
        its background level up to that speech (the floor gate, against babble); pauses
        shorter than 0.25 s stay inside a speech region, regions are padded by 0.03 s,
        and a quiet recording is amplified by up to 20 dB before Silero reads it.
    """

    num_speakers: int | None = None
    min_speakers: int = 1
    max_speakers: int = 10
    clustering: str = "spectral"
    threshold: float | None = None
    p: float | None = 0.2
    centring: str = "recording"
    smoothing: int = 0
    window: float = 1.5
    hop: float = 0.75
    long_windows: tuple[float, ...] = (2.0, 3.0)
    window_bridge: float = 0.5
    min_segment: float = 0.0
    resegment: bool = True
    switch_penalty: float = 0.2
    embedding_pass: str = "window"
    batch_size: int = 32
    vad: VADOptions = dataclasses.field(
        default_factory=lambda: VADOptions(
            threshold=0.3,
            min_silence=0.25,
            speech_pad=0.03,
            energy_gate=20.0,
            floor_gate=0.35,
            max_gain=20.0,
        )
    )

    def __post_init__(self) -> None:
        self.count  # validates the speaker count  # noqa: B018
        if self.clustering not in CLUSTERINGS:
            raise ConfigError(f"clustering must be one of {CLUSTERINGS}, got {self.clustering!r}")
        if self.centring not in CENTRINGS:
            raise ConfigError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        if not self.switch_penalty >= 0.0:
            raise ConfigError(f"switch_penalty must be >= 0, got {self.switch_penalty}")
        if self.smoothing < 0:
            raise ConfigError(f"smoothing must be >= 0 windows, got {self.smoothing}")
        if self.embedding_pass not in EMBEDDING_PASSES:
            raise ConfigError(
                f"embedding_pass must be one of {EMBEDDING_PASSES}, got {self.embedding_pass!r}"
            )
        if not (self.window > 0 and 0 < self.hop <= self.window):
            raise ConfigError(
                f"need window > 0 and 0 < hop <= window, got {self.window} and {self.hop}"
            )
        if not all(length > 0 for length in self.long_windows):
            raise ConfigError(f"long_windows must be > 0 seconds, got {self.long_windows}")
        if not self.window_bridge >= 0.0:
            raise ConfigError(f"window_bridge must be >= 0 seconds, got {self.window_bridge}")
        if self.p is not None and not 0.0 < self.p <= 1.0:
            raise ConfigError(f"p must lie in (0, 1], got {self.p}")

    @property
    def count(self) -> SpeakerCount:
        return SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)


@dataclasses.dataclass(frozen=True)
class Diarization:
    """One recording's answer: segments (time order) with speaker labels or names."""

    file_id: str
    duration: float
    speech_seconds: float
    segments: tuple[Segment, ...]
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # label -> enrolled name
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> run time

    @property
    def speakers(self) -> list[str]:
        """The speakers, in order of first appearance."""
        return list(dict.fromkeys(s.speaker for s in self.segments))

    def to_json(self) -> dict:
        return {
            "file": self.file_id,
            "duration": round(self.duration, 3),
            "speech_seconds": round(self.speech_seconds, 3),
            "num_speakers": len(self.speakers),
            "speakers": self.speakers,
            "names": self.names,
            "segments": [s.to_json() for s in self.segments],
            "seconds": self.seconds,
        }


def diarize(
    model: Speaker,
    audio: str | Path | np.ndarray,
    *,
    sample_rate: int | None = None,
    file_id: str | None = None,
    options: DiarizeOptions = DiarizeOptions(),
    speakers: SpeakerDB | None = None,
    name_threshold: float | None = None,
    vad: SileroVAD | None = None,
    speech: np.ndarray | None = None,
    progress: Progress | None = None,
) -> Diarization:
    """Who spoke when in one recording (a file of any length, or samples).

    Args:
        model: any lapsv model (:func:`lapsv.load_model`).
        audio: an audio file, or samples (N,) / (N, channels) at ``sample_rate``.
        file_id: the RTTM file id (default: the file's stem, or ``"audio"``).
        speakers: a :class:`~lapsv.speakers.SpeakerDB`: each cluster's mean embedding is
            identified, and clusters that pass the threshold take the enrolled name.
        name_threshold: the naming threshold (default: the identify rule, LLR 0 when the
            model is calibrated).
        vad: a loaded :class:`SileroVAD` to reuse across recordings.
        speech: (R, 2) speech [start, end) seconds to use instead of the VAD's (oracle
            speech regions, say from a reference RTTM).
        progress: called with (stage, seconds of audio done) as the recording is read.

    Raises:
        AudioError: the file cannot be read, or holds no speech.
        ConfigError: impossible options (more speakers asked for than windows).
    """
    file_id = file_id or (Path(audio).stem if isinstance(audio, str | Path) else "audio")
    clock = StageClock()
    reader, regions, n_samples = find_speech(
        audio, sample_rate=sample_rate, vad=vad, speech=speech, options=options.vad,
        progress=progress,
    )  # fmt: skip
    clock.done("vad")
    duration = n_samples / SAMPLE_RATE
    scaled = diarization_windows(regions, options, duration)
    spans = np.round(scaled.spans * SAMPLE_RATE).astype(np.int64)
    embeddings = _embed(model, _reported(reader(), "embeddings", progress), spans, options)
    clock.done("embeddings")
    segments, names = label_windows(
        model,
        embeddings[scaled.rows[0]],
        scaled.windows,
        options,
        longer=scaled.longer(embeddings),
        speech=regions,
        speakers=speakers,
        name_threshold=name_threshold,
    )
    clock.done("clustering")
    speech_seconds = float(np.sum(regions[:, 1] - regions[:, 0]))
    return Diarization(file_id, duration, speech_seconds, tuple(segments), names, clock.seconds)


def diarization_windows(
    regions: np.ndarray, options: DiarizeOptions, duration: float
) -> ScaledWindows:
    """Embedding windows (``options.window``, and ``options.long_windows``) over (R, 2)
    speech regions joined across pauses shorter than ``options.window_bridge``, in a
    recording ``duration`` seconds long."""
    joined = bridged_regions(regions, options.window_bridge)
    return scaled_windows(
        joined,
        window=options.window,
        hop=options.hop,
        longer=options.long_windows,
        duration=duration,
    )


def label_windows(
    model: Speaker,
    embeddings: np.ndarray,
    windows: np.ndarray,
    options: DiarizeOptions,
    *,
    longer: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    speech: np.ndarray | None = None,
    speakers: SpeakerDB | None = None,
    name_threshold: float | None = None,
) -> tuple[list[Segment], dict[str, str]]:
    """Cluster (W, E) window embeddings of (W, 2) windows into speaker segments, cut to
    the (R, 2) ``speech`` regions when given, named from ``speakers`` where they pass the
    threshold: (segments, label -> name). ``longer``: for each longer scale, the (W, 2)
    windows nearest each window and their (W, E) embeddings (:func:`multiscale_affinity`,
    :meth:`~lapsv.diarization.windows.ScaledWindows.longer`)."""
    labels = _cluster(model, embeddings, windows, options, longer)
    segments = windows_to_segments(windows, [f"SPEAKER_{k:02d}" for k in labels])
    if speech is not None:
        segments = clip_segments(segments, speech)
    segments = [s for s in segments if s.duration >= options.min_segment]
    names: dict[str, str] = {}
    if speakers is not None:
        names = name_clusters(model, speakers, embeddings, labels, windows, name_threshold)
        segments = [
            dataclasses.replace(s, speaker=names.get(s.speaker, s.speaker)) for s in segments
        ]
    return segments, names


class StageClock:
    """Seconds spent in each stage, for the report and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now


def _reported(
    blocks: Iterator[np.ndarray], stage: str, progress: Progress | None
) -> Iterator[np.ndarray]:
    done = 0
    for block in blocks:
        yield block
        done += len(block)
        if progress is not None:
            progress(stage, done / SAMPLE_RATE)


def _embed(
    model: Speaker, blocks: Iterator[np.ndarray], spans: np.ndarray, options: DiarizeOptions
) -> np.ndarray:
    if options.embedding_pass == "shared":
        if not isinstance(model.encoder, SpeakerModel):
            raise ConfigError(
                "embedding_pass 'shared' needs a trained lapsv model directory (its frontend "
                f"and backend); {type(model.encoder).__name__} embeds windows alone: use "
                "embedding_pass 'window'"
            )
        return shared_pass_embeddings(model.encoder, blocks, spans, batch_size=options.batch_size)
    return window_embeddings(model, blocks, spans, batch_size=options.batch_size)


def _cluster(
    model: Speaker,
    embeddings: np.ndarray,
    windows: np.ndarray,
    options: DiarizeOptions,
    longer: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> np.ndarray:
    def centred(x: np.ndarray) -> np.ndarray:
        return smooth_windows(_centred(model, x, options), windows, options.smoothing)

    base = centred(embeddings)
    affinity = multiscale_affinity(base, [(w, centred(x)) for w, x in longer])
    count = options.count
    if options.clustering == "spectral":
        labels = spectral_clusters(affinity, count, p=options.p)
    elif options.threshold is not None:
        labels = agglomerative_clusters(affinity, threshold=options.threshold, count=count)
    else:
        labels = agglomerative_clusters(
            _llr_matrix(model, embeddings, windows), threshold=0.0, count=count
        )
    if options.resegment:
        decoded = viterbi_resegmentation(
            base, windows, labels, switch_penalty=options.switch_penalty
        )
        if decoded.max() + 1 >= (count.exact or count.low):  # a fixed count stays fixed
            labels = decoded
    return labels


def _centred(model: Speaker, embeddings: np.ndarray, options: DiarizeOptions) -> np.ndarray:
    """(W, E) -> (W, E) length-normalised embeddings minus the mean of ``options.centring``.

    The recording's mean removes what all its windows share (channel, noise, the model's
    offset on unseen voices), so the speakers' differences decide the cosines.
    """
    if options.centring == "recording" and len(embeddings) > 2:
        return center_and_normalize(embeddings, mean=embedding_mean(embeddings))
    return center_and_normalize(embeddings, mean=model.scoring.mean)


def _llr_matrix(model: Speaker, embeddings: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(W, W) calibrated LLR of every window pair, through the one scoring path."""
    state = model.scoring
    if not state.calibrated:
        raise ConfigError(
            "clustering 'ahc' needs a threshold: give --threshold (a cosine), or use a model "
            "calibrated with QMF (its LLR 0 is the threshold), or clustering 'spectral'"
        )
    n = len(embeddings)
    rows, cols = np.triu_indices(n, k=1)
    seconds = windows[:, 1] - windows[:, 0]
    scores = score_pairs(
        state, embeddings, embeddings, rows, cols, enroll_seconds=seconds, test_seconds=seconds
    )
    matrix = np.zeros((n, n))
    matrix[rows, cols] = matrix[cols, rows] = scores.decision
    np.fill_diagonal(matrix, np.max(scores.decision, initial=0.0))
    return matrix


def name_clusters(
    model: Speaker,
    speakers: SpeakerDB,
    embeddings: np.ndarray,
    labels: np.ndarray,
    windows: np.ndarray,
    threshold: float | None,
) -> dict[str, str]:
    """SPEAKER_xx -> enrolled name of each cluster whose mean embedding is identified (the
    identify path and its threshold); a name goes to its best-scoring cluster only."""
    k = int(labels.max()) + 1
    means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)])
    seconds = [float(np.sum(np.diff(windows[labels == c], axis=1))) for c in range(k)]
    found = identify_embeddings(
        speakers,
        model,
        means,
        seconds,
        [f"SPEAKER_{c:02d}" for c in range(k)],
        top_k=1,
        threshold=threshold,
    )
    best: dict[str, tuple[float, str]] = {}
    for result in found:
        if result.answer and result.answer != "unknown":
            score = result.candidates[0].score
            if result.answer not in best or score > best[result.answer][0]:
                best[result.answer] = (score, result.source)
    return {label: name for name, (_, label) in best.items()}
