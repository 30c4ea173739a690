"""Batched embedding extraction: sort by length, pad, embed, restore the input order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from lapsv.audio import audio_duration, load_audio, pad_batch
from lapsv.errors import AudioError
from lapsv.files import atomic_path


class Embedder(Protocol):
    """Anything lapsv can embed with: a SpeakerModel or the built-in GE2E encoder."""

    embed_dim: int
    sample_rate: int

    def embed(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


def embed_waveforms(
    model: Embedder,
    waveforms: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embed 16 kHz mono waveforms in length-sorted batches.

    Sorting by length keeps padding small; masking makes the result independent of it.

    Args:
        model: SpeakerModel or GE2EEncoder, already on ``device``.
        waveforms: 1-D float32 arrays of any lengths.
        batch_size: utterances per forward pass.

    Returns:
        (len(waveforms), E) float32, in input order.
    """
    embeddings = np.zeros((len(waveforms), model.embed_dim), dtype=np.float32)
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch, lengths = pad_batch([waveforms[i] for i in rows])
        output = model.embed(batch.to(device), lengths.to(device))
        embeddings[rows] = output.float().cpu().numpy()
    return embeddings


@dataclasses.dataclass
class EmbeddingSet:
    """Embeddings of named utterances, with durations and the files that failed.

    ids: n utterance ids; embeddings: (n, E) float32; seconds: (n,) durations;
    failures: (id, reason) of utterances that could not be embedded.
    """

    ids: list[str]
    embeddings: np.ndarray
    seconds: np.ndarray
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def index(self) -> dict[str, int]:
        return {utt: row for row, utt in enumerate(self.ids)}

    def columns(self, span: slice) -> EmbeddingSet:
        """The same utterances with only the embedding columns ``span``."""
        return EmbeddingSet(self.ids, self.embeddings[:, span], self.seconds, self.failures)

    def save(self, path: str | Path, *, model_id: str = "") -> None:
        """Write an .npz atomically (no pickled objects inside)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                ids=np.array(self.ids, dtype=str),
                embeddings=self.embeddings,
                seconds=self.seconds,
                model_id=np.array(model_id),
            )

    @classmethod
    def load(cls, path: str | Path) -> tuple[EmbeddingSet, str]:
        """Read an .npz written by :meth:`save`; returns the set and its model id."""
        with np.load(path, allow_pickle=False) as data:
            model_id = str(data["model_id"]) if "model_id" in data else ""
            seconds = data["seconds"] if "seconds" in data else np.zeros(len(data["ids"]))
            return cls(list(map(str, data["ids"])), data["embeddings"], seconds), model_id


def extract_embeddings(
    model: Embedder,
    items: Sequence[tuple[str, str | Path]],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EmbeddingSet:
    """Embed (utterance id, audio path) items, full length, in length-sorted batches.

    Files are read batch by batch (memory stays bounded by one batch); unreadable or
    unusable files are recorded in ``failures`` and the others are still embedded.
    """
    durations = []
    failures: list[tuple[str, str]] = []
    for utt, path in items:
        try:
            durations.append((audio_duration(path), utt, path))
        except AudioError as error:
            failures.append((utt, error.reason))
    durations.sort(key=lambda item: -item[0])
    ids, vectors, seconds = [], [], []
    batches = range(0, len(durations), batch_size)
    for start in tqdm(batches, desc="embedding", unit="batch", disable=not progress):
        waves, batch_ids = [], []
        for _, utt, path in durations[start : start + batch_size]:
            try:
                waves.append(load_audio(path, sample_rate=model.sample_rate))
                batch_ids.append(utt)
            except AudioError as error:
                failures.append((utt, error.reason))
        if waves:
            vectors.append(embed_waveforms(model, waves, batch_size=batch_size, device=device))
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
        self.embed_dim = sum(b.embed_dim for b in backends.values())

    def columns(self) -> dict[str, slice]:
        spans, start = {}, 0
        for name, backend in self.backends.items():
            spans[name] = slice(start, start + backend.embed_dim)
            start += backend.embed_dim
        return spans

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        modes = [module.training for module in (self.frontend, *self.backends.values())]
        self.eval()
        try:
            hidden, frames = self.frontend(waveforms, lengths)
            return torch.cat([b(hidden, frames) for b in self.backends.values()], dim=1)
        finally:
            for module, mode in zip((self.frontend, *self.backends.values()), modes, strict=True):
                module.train(mode)
