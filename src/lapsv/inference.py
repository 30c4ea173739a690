"""Batched embedding extraction: sort by length, pad, embed, restore the input order.

Also the long-recording rule (:func:`window_bounds`, :data:`DEFAULT_MAX_SECONDS`) and the
expansion of audio inputs (files, folders, ``wav.scp``) into (id, path) items.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from lapsv.audio import (
    AUDIO_SUFFIXES,
    SILENCE_PEAK,
    audio_duration,
    load_audio,
    pad_batch,
    prepare_waveform,
    read_blocks,
)
from lapsv.embeddings import EmbeddingSet
from lapsv.errors import AudioError, ConfigError
from lapsv.model import evaluating


class Embedder(Protocol):
    """Anything lapsv can embed with: a SpeakerModel, the built-in GE2E encoder, an exported
    model, a :class:`~lapsv.speaker.Speaker`, or :class:`SharedFrontendModel`.

    One may also have ``max_input_seconds``, the longest input its encoder takes at once
    (Whisper: 30 s); longer recordings are then windowed by the same rule as
    ``max_seconds`` (:func:`window_bounds`).
    """

    embed_dim: int
    sample_rate: int

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) zero-padded waveforms, (B,) lengths -> (B, E) eval-mode embeddings."""
        ...


DEFAULT_MAX_SECONDS = 60.0
"""Recordings longer than this are embedded window by window (see :func:`window_bounds`);
the one default of every verb and function that embeds recordings (``None``: never)."""


def window_bounds(n_samples: int, max_samples: int | None) -> list[tuple[int, int]]:
    """Cut ``n_samples`` into the fewest equal windows of at most ``max_samples``.

    This is the long-recording rule of lapsv: a recording longer than ``max_seconds`` is
    cut into ``ceil(n / max)`` windows whose lengths differ by at most one sample (so no
    window is a short leftover), each window is embedded on its own, silent windows (peak
    below -80 dBFS) are skipped unless all are silent, and the recording's embedding is the
    mean of its windows' raw embeddings. A recording of at most ``max_samples`` is one
    window: its embedding is exactly the whole-recording embedding.

    >>> window_bounds(10, 4)
    [(0, 3), (3, 6), (6, 10)]
    >>> window_bounds(10, None)
    [(0, 10)]
    """
    if max_samples is None or n_samples <= max_samples:
        return [(0, n_samples)]
    count = -(-n_samples // max_samples)
    edges = [i * n_samples // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def _max_samples(model: Embedder, max_seconds: float | None) -> int | None:
    """The window length in samples: ``max_seconds``, capped by the model's input limit."""
    if max_seconds is not None and not max_seconds >= 1.0:
        raise ConfigError(f"max_seconds must be at least 1 s (or None), got {max_seconds!r}")
    limits = [max_seconds, getattr(model, "max_input_seconds", None)]
    seconds = min((limit for limit in limits if limit is not None), default=None)
    return None if seconds is None else int(seconds * model.sample_rate)


def _silent(piece: np.ndarray) -> bool:
    return piece.size == 0 or float(np.abs(piece).max()) < SILENCE_PEAK


def _embed_pieces(
    model: Embedder,
    pieces: Sequence[np.ndarray],
    *,
    batch_size: int,
    device: str | torch.device,
) -> np.ndarray:
    """(len(pieces), E) raw embeddings, each piece whole, in length-sorted batches."""
    embeddings = np.zeros((len(pieces), model.embed_dim), dtype=np.float32)
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch, lengths = pad_batch([pieces[i] for i in rows])
        output = model.embed_batch(batch.to(device), lengths.to(device))
        embeddings[rows] = output.float().cpu().numpy()
    return embeddings


def _window_mean(vectors: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    sums = np.zeros((n, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, vectors)
    counts = np.bincount(owners, minlength=n)[:, None]
    return (sums / counts).astype(np.float32)


def embed_waveforms(
    model: Embedder,
    waveforms: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Embed 16 kHz mono waveforms in length-sorted batches.

    Sorting by length keeps padding small; masking makes the result independent of it.
    Waveforms longer than ``max_seconds`` are embedded window by window and averaged
    (:func:`window_bounds`), so the frontend never sees more than ``batch_size`` windows of
    ``max_seconds`` at once; ``None`` embeds every waveform whole.

    Args:
        model: SpeakerModel or GE2EEncoder, already on ``device``.
        waveforms: 1-D float32 arrays of any lengths.
        batch_size: utterances (or windows) per forward pass.

    Returns:
        (len(waveforms), E) float32, in input order.
    """
    limit = _max_samples(model, max_seconds)
    pieces: list[np.ndarray] = []
    owners: list[int] = []
    for index, wave in enumerate(waveforms):
        windows = [wave[a:b] for a, b in window_bounds(len(wave), limit)]
        if len(windows) > 1:
            voiced = [w for w in windows if not _silent(w)]
            windows = voiced or windows
        pieces.extend(windows)
        owners.extend([index] * len(windows))
    raw = _embed_pieces(model, pieces, batch_size=batch_size, device=device)
    if len(pieces) == len(waveforms):
        return raw
    return _window_mean(raw, np.array(owners), len(waveforms))


def embed_file(
    model: Embedder,
    path: str | Path,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, float]:
    """(E,) raw embedding and duration in seconds of one audio file, in bounded memory.

    A file of at most ``max_seconds`` is read whole (:func:`~lapsv.audio.load_audio`).
    A longer one is read window by window straight from the file (never whole), each window
    down-mixed and resampled on its own, and embedded by the rule of :func:`window_bounds`:
    memory is bounded by ``batch_size`` windows of ``max_seconds``, whatever the file's
    length. The result equals :func:`embed_waveforms` on the whole decoded file.
    """
    source = str(path)
    rate = model.sample_rate
    limit = _max_samples(model, max_seconds)
    duration = audio_duration(path)  # raises AudioError for missing / undecodable files
    if limit is None or duration * rate <= limit:
        wave = load_audio(path, sample_rate=rate)
        vector = embed_waveforms(model, [wave], batch_size=batch_size, device=device)[0]
        return vector, len(wave) / rate
    total, voiced = 0.0, 0
    sums = np.zeros(model.embed_dim, dtype=np.float64)
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal voiced
        vectors = _embed_pieces(model, batch, batch_size=batch_size, device=device)
        sums[:] += vectors.sum(axis=0, dtype=np.float64)
        voiced += len(batch)
        batch.clear()

    try:
        for window in read_blocks(source, sample_rate=rate, block_samples=limit):
            total += len(window) / rate
            if not np.isfinite(window).all():
                raise AudioError(source, "audio contains NaN or infinite samples")
            if not _silent(window):
                batch.append(window)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(source, f"cannot decode audio ({error})") from error
    if voiced == 0:
        raise AudioError(source, "silent audio (peak below -80 dBFS)")
    return (sums / voiced).astype(np.float32), total


def embed_audio(
    model: Embedder,
    audio: str | Path | np.ndarray | torch.Tensor,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, float]:
    """(E,) raw embedding and duration of one recording: a file path, or an array.

    Args:
        audio: an audio file, or samples shaped (N,) or (N, channels) (stereo is
            down-mixed), float in [-1, 1] or integer PCM.
        sample_rate: the array's rate (resampled to the model's); ``None`` means the
            model's own rate. Not used for files, whose header says their rate.
        max_seconds: longer recordings are embedded window by window (:func:`window_bounds`).
    """
    if isinstance(audio, str | Path):
        if sample_rate is not None:
            raise ConfigError("sample_rate is for arrays; an audio file's header has its rate")
        return embed_file(model, audio, max_seconds=max_seconds, device=device)
    if not isinstance(audio, np.ndarray | torch.Tensor):
        raise TypeError(
            f"expected an audio file path or an array of samples, got {type(audio).__name__}"
        )
    shape = tuple(audio.shape)
    if len(shape) == 2 and shape[1] > 16 and shape[0] <= 16:
        raise AudioError(
            "<array>",
            f"shape {shape} looks like (channels, samples); pass (samples, channels), or a "
            "zero-padded batch with its lengths: model.embed_batch(waveforms, lengths)",
        )
    rate = model.sample_rate if sample_rate is None else int(sample_rate)
    wave = prepare_waveform(audio, rate, sample_rate=model.sample_rate)
    vector = embed_waveforms(model, [wave], device=device, max_seconds=max_seconds)[0]
    return vector, len(wave) / model.sample_rate


def extract_embeddings(
    model: Embedder,
    items: Sequence[tuple[str, str | Path]],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> EmbeddingSet:
    """Embed (utterance id, audio path) items in length-sorted batches.

    Files are read batch by batch (memory stays bounded by one batch); files longer than
    ``max_seconds`` are read and embedded window by window (:func:`embed_file`), so one
    very long file does not need memory for all of it. Unreadable or unusable files are
    recorded in ``failures`` and the others are still embedded.
    """
    limit = _max_samples(model, max_seconds)
    durations = []
    failures: list[tuple[str, str]] = []
    for utt, path in items:
        try:
            durations.append((audio_duration(path), utt, path))
        except AudioError as error:
            failures.append((utt, error.reason))
    durations.sort(key=lambda item: -item[0])
    long = [item for item in durations if limit is not None and item[0] * model.sample_rate > limit]
    short = durations[len(long) :]
    jobs = [(True, [item]) for item in long] + [
        (False, short[start : start + batch_size]) for start in range(0, len(short), batch_size)
    ]
    ids, vectors, seconds = [], [], []
    for windowed, job in tqdm(jobs, desc="embedding", unit="batch", disable=not progress):
        if windowed:
            _, utt, path = job[0]
            try:
                vector, length = embed_file(
                    model, path, max_seconds=max_seconds, batch_size=batch_size, device=device
                )
            except AudioError as error:
                failures.append((utt, error.reason))
                continue
            vectors.append(vector[None])
            ids.append(utt)
            seconds.append(length)
            continue
        waves, batch_ids = [], []
        for _, utt, path in job:
            try:
                waves.append(load_audio(path, sample_rate=model.sample_rate))
                batch_ids.append(utt)
            except AudioError as error:
                failures.append((utt, error.reason))
        if waves:
            vectors.append(
                embed_waveforms(
                    model, waves, batch_size=batch_size, device=device, max_seconds=max_seconds
                )
            )
            ids.extend(batch_ids)
            seconds.extend(len(w) / model.sample_rate for w in waves)
    embeddings = (
        np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), dtype=np.float32)
    )
    return EmbeddingSet(ids, embeddings, np.array(seconds, dtype=np.float32), failures)


class SharedFrontendModel(torch.nn.Module):
    """Several backends on one frontend: ``embed`` returns their embeddings side by side.

    The frontend (the expensive part) runs once per batch; ``columns()`` says which
    embedding columns belong to which backend.
    """

    def __init__(self, frontend: torch.nn.Module, backends: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.frontend = frontend
        self.backends = torch.nn.ModuleDict(backends)
        self.sample_rate = frontend.sample_rate
        self.max_input_seconds = getattr(frontend, "max_input_seconds", None)
        self.embed_dim = sum(b.embed_dim for b in backends.values())

    def columns(self) -> dict[str, slice]:
        spans, start = {}, 0
        for name, backend in self.backends.items():
            spans[name] = slice(start, start + backend.embed_dim)
            start += backend.embed_dim
        return spans

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N), (B,) -> (B, sum of the backends' E): eval mode, no autograd."""
        with evaluating(self):
            hidden, frames = self.frontend(waveforms, lengths)
            return torch.cat([b(hidden, frames) for b in self.backends.values()], dim=1)


def expand_audio_inputs(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """(utterance id, path) pairs from files, folders (recursive) and Kaldi ``wav.scp`` files.

    A folder contributes every audio file under it, its id the path relative to the folder's
    parent; a ``.scp`` file contributes ``<id> <path>`` lines; any other path is one file.
    """
    items: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
                items.append((str(file.relative_to(path.parent)), str(file)))
        elif path.suffix == ".scp" and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    utt, _, location = line.strip().partition(" ")
                    items.append((utt, location.strip()))
        else:
            items.append((raw, raw))
    return items
