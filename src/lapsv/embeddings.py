"""The one embedding container: named utterance embeddings, their durations, and failures.

:func:`~lapsv.inference.extract_embeddings` returns one, ``lapsv embed`` / ``lapsv eval``
save them as ``.npz``, and scoring addresses its rows by id (:meth:`EmbeddingSet.rows`,
:meth:`EmbeddingSet.trial_rows`). It sits below both inference and scoring, so scoring
needs no audio or torch code to read embeddings.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lapsv.errors import ScoringError
from lapsv.files import atomic_path


@dataclasses.dataclass
class EmbeddingSet:
    """Embeddings of named utterances, with durations and the files that failed.

    ids: n unique utterance ids (a tuple); embeddings: (n, E) float32; seconds: (n,)
    durations; failures: (id, reason) of utterances that could not be embedded.

    The id -> row index is built once, at the first lookup, and kept (``ids`` is a tuple,
    so it cannot change under it; assigning new ``ids`` builds a new index): a lookup per
    speaker or per trial costs only its own ids, never a pass over the whole set.

    >>> table = EmbeddingSet(["a", "b"], np.eye(2, dtype=np.float32), np.ones(2))
    >>> table.rows(["b", "b", "a"]).tolist()
    [1, 1, 0]
    """

    ids: tuple[str, ...]
    embeddings: np.ndarray
    seconds: np.ndarray
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = tuple(self.ids)
        self._index: tuple[tuple[str, ...], dict[str, int]] | None = None
        if len(self.embeddings) != len(self.ids):
            raise ScoringError(f"{len(self.ids)} ids but {len(self.embeddings)} embedding rows")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int = 0) -> EmbeddingSet:
        return cls((), np.zeros((0, dim), np.float32), np.zeros(0, np.float32))

    def index(self) -> dict[str, int]:
        """id -> row (built once and kept; do not modify it); an error names duplicate ids."""
        if self._index is not None and self._index[0] is self.ids:
            return self._index[1]
        index = {utt: row for row, utt in enumerate(self.ids)}
        if len(index) != len(self.ids):
            duplicates = [u for u, count in Counter(self.ids).items() if count > 1]
            raise ScoringError(
                f"{len(duplicates)} duplicate embedding id(s), e.g. {duplicates[:5]}"
            )
        self._index = (self.ids, index)
        return index

    def rows(self, wanted: Iterable[str]) -> np.ndarray:
        """(m,) int64 row of each wanted id; an error lists up to 5 unknown ids."""
        index = self.index()
        wanted = list(wanted)
        rows = np.fromiter((index.get(u, -1) for u in wanted), dtype=np.int64, count=len(wanted))
        if (rows < 0).any():
            missing = list(dict.fromkeys(u for u, r in zip(wanted, rows, strict=True) if r < 0))
            raise ScoringError(
                f"{len(missing)} id(s) have no embedding, e.g. {missing[:5]}; embed them or "
                f"fix the trial list"
            )
        return rows

    def trial_rows(
        self, enroll: Sequence[str], test: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of the trials whose both sides are here: (keep mask (n,), pairs_e, pairs_t).

        Trials with a side that was not embedded (a failed file) are left out, not errors.
        """
        index = self.index()
        pairs_e = np.fromiter((index.get(u, -1) for u in enroll), np.int64, len(enroll))
        pairs_t = np.fromiter((index.get(u, -1) for u in test), np.int64, len(test))
        if len(pairs_e) != len(pairs_t):
            raise ScoringError(f"{len(pairs_e)} enrolment ids but {len(pairs_t)} test ids")
        keep = (pairs_e >= 0) & (pairs_t >= 0)
        return keep, pairs_e[keep], pairs_t[keep]

    def in_order(self, ids: Sequence[str]) -> EmbeddingSet:
        """The rows reordered as ``ids`` lists them; rows whose id is not in ``ids`` are
        left out, and rows sharing an id (a file given twice) stay, in their order."""
        position: dict[str, int] = {}
        for index, utt in enumerate(ids):
            position.setdefault(utt, index)
        wanted = np.fromiter((position.get(u, -1) for u in self.ids), np.int64, len(self.ids))
        rows = np.flatnonzero(wanted >= 0)
        rows = rows[np.argsort(wanted[rows], kind="stable")]
        return EmbeddingSet(
            tuple(self.ids[r] for r in rows),
            self.embeddings[rows],
            self.seconds[rows],
            self.failures,
        )

    def columns(self, span: slice) -> EmbeddingSet:
        """The same utterances with only the embedding columns ``span``."""
        return EmbeddingSet(self.ids, self.embeddings[:, span], self.seconds, self.failures)

    def merged(self, other: EmbeddingSet) -> EmbeddingSet:
        """These rows then ``other``'s; failures are ``other``'s (the newer attempt)."""
        if not self.ids:
            return other
        return EmbeddingSet(
            self.ids + other.ids,
            np.concatenate([self.embeddings, other.embeddings]),
            np.concatenate([self.seconds, other.seconds]),
            other.failures,
        )

    def save(self, path: str | Path, *, model_id: str = "") -> None:
        """Write an .npz atomically (no pickled objects inside); ``model_id``: the
        :attr:`~lapsv.speaker.Speaker.model_id` of the model that made them."""
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
        try:
            with np.load(path, allow_pickle=False) as data:
                model_id = str(data["model_id"]) if "model_id" in data else ""
                seconds = data["seconds"] if "seconds" in data else np.zeros(len(data["ids"]))
                return cls(tuple(map(str, data["ids"])), data["embeddings"], seconds), model_id
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ScoringError(
                f"{path}: not an embeddings file written by lapsv embed / eval ({error})"
            ) from error
