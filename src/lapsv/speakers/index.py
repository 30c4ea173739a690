"""Search the speaker models of a database by cosine, fast at a million speakers and
never behind the database.

:class:`SpeakerIndex` keeps a *base* index of the models as of one database generation
and an in-memory *overlay* of what changed since: before every search it reads the
changes newer than what it holds (:meth:`SpeakerDB.changes_since`), masks the base rows
they replace or remove and searches the overlay exactly. So an answer always reflects the
database as of the search. When the overlay grows past ``overlay_limit`` speakers, its
new speakers are added to the base (HNSW and flat indexes take additions in place) and the
base is stored again; only when many base rows are replaced or removed (over half the
limit) is the base rebuilt from the database.

The base is, by speaker count ``S``:

* ``S <= exact_limit`` (200,000): exact inner product (FAISS ``IndexFlatIP``, or numpy
  over a memory-mapped matrix when FAISS is not installed);
* above: FAISS HNSW (M = 32, efConstruction 80, efSearch 1024), approximate. Building it
  takes minutes per million speakers on 2 cores (benchmarks/RESULTS.md). Exact search
  over a million 192-d speakers reads 768 MB per query (about 30 ms on one core here) and
  100 queries take seconds; HNSW answers them in milliseconds.

Vectors are the models after :func:`~lapsv.scoring.norm.center_and_normalize` with the
scoring state's training mean, so the inner product is the cosine ``lapsv verify`` gives.
The base is stored beside the database (``SPEAKERS.db.index/``: a JSON header naming the
database generation, model, mean and file, and the index file) and reused by the next
process when it matches; it is a cache: deleting it only costs a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lapsv.files import atomic_path, atomic_write_text
from lapsv.scoring.norm import center_and_normalize
from lapsv.speakers.database import SpeakerDB

INDEX_FORMAT = "lapsv-speaker-index"
EXACT_LIMIT = 200_000
OVERLAY_LIMIT = 20_000
NOTICE_LIMIT = 10_000  # from this many speakers, say once that FAISS would be faster
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 1024
SMALL_BATCH = 16
_CHUNK_ROWS = 1 << 17


class NoFaissWarning(UserWarning):
    """FAISS is not installed: exact numpy search (slower on large databases)."""


def faiss_module() -> Any | None:
    """The faiss module, or None when it is not installed (``pip install 'lapsv[index]'``)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def mean_key(mean: np.ndarray | None) -> str:
    """Fingerprint of the training mean the base vectors were centred with."""
    if mean is None:
        return "none"
    return hashlib.sha256(np.ascontiguousarray(mean, dtype="<f4").tobytes()).hexdigest()[:16]


class _Base(Protocol):
    kind: str
    count: int

    def search(
        self, queries: np.ndarray, k: int, hidden: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...

    def ids(self) -> np.ndarray: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...


class NumpyBase:
    """Exact inner-product search over an (S, E) float32 matrix (memory-mapped when read
    from the index folder) and its (S,) speaker ids."""

    kind = "numpy"
    suffix = ".npz"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.row_ids, self.vectors, self.count = ids, vectors, len(ids)

    @classmethod
    def load(cls, path: Path) -> NumpyBase:
        vectors = np.load(path.with_suffix(".vectors.npy"), mmap_mode="r", allow_pickle=False)
        ids = np.load(path.with_suffix(".ids.npy"), allow_pickle=False)
        if len(ids) != len(vectors):
            raise ValueError(f"{path}: {len(ids)} ids for {len(vectors)} vectors")
        return cls(ids, vectors)

    def save(self, path: Path) -> None:
        for suffix, array in ((".vectors.npy", self.vectors), (".ids.npy", self.row_ids)):
            with atomic_path(path.with_suffix(suffix)) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.asarray(array), allow_pickle=False)

    def files(self, path: Path) -> list[Path]:
        return [path.with_suffix(".vectors.npy"), path.with_suffix(".ids.npy")]

    def ids(self) -> np.ndarray:
        return np.asarray(self.row_ids, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """More rows (read into memory if the matrix was memory-mapped)."""
        self.vectors = np.concatenate([np.asarray(self.vectors), vectors.astype(np.float32)])
        self.row_ids = np.concatenate([np.asarray(self.row_ids, np.int64), ids])
        self.count = len(self.row_ids)

    def search(
        self, queries: np.ndarray, k: int, hidden: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows whose ids are not ``hidden`` (those come out with score -inf)."""
        scores, ids = top_k(queries, self.vectors, self.row_ids, k + len(hidden))
        if len(hidden):
            scores = np.where(np.isin(ids, hidden), -np.inf, scores)
        return scores, ids


class FaissBase:
    """A FAISS index with speaker ids (``IndexIDMap2``): flat (exact) or HNSW."""

    suffix = ".faiss"

    def __init__(self, index: Any, kind: str) -> None:
        self.index, self.kind, self.count = index, kind, index.ntotal
        self.ef_search = HNSW_EF_SEARCH

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, *, exact: bool) -> FaissBase:
        faiss = faiss_module()
        dim = vectors.shape[1]
        if exact:
            inner = faiss.IndexFlatIP(dim)
        else:
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(inner)
        for start in range(0, len(ids), _CHUNK_ROWS):
            part = slice(start, start + _CHUNK_ROWS)
            index.add_with_ids(np.ascontiguousarray(vectors[part], np.float32), ids[part])
        return cls(index, "faiss-flat" if exact else "faiss-hnsw")

    @classmethod
    def load(cls, path: Path, kind: str) -> FaissBase:
        return cls(faiss_module().read_index(str(path)), kind)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            faiss_module().write_index(self.index, str(tmp))

    def files(self, path: Path) -> list[Path]:
        return [path]

    def ids(self) -> np.ndarray:
        return faiss_module().vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """More rows, in place (HNSW links them into its graph)."""
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
        self.count = self.index.ntotal

    def search(
        self, queries: np.ndarray, k: int, hidden: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows whose ids are not ``hidden`` (filtered inside the search)."""
        faiss = faiss_module()
        k = min(k, self.count)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        selector = None
        if len(hidden):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(hidden))
        if self.kind == "faiss-hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, 2 * k))
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        threads = faiss.omp_get_max_threads()
        if len(queries) < SMALL_BATCH:  # threads that wait for each other cost more than
            faiss.omp_set_num_threads(1)  # they save on a few queries (5x on 2 busy cores)
        try:
            scores, ids = self.index.search(
                np.ascontiguousarray(queries, np.float32), k, params=params
            )
        finally:
            faiss.omp_set_num_threads(threads)
        return scores, ids


def top_k(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of (n, E) queries over (S, E) vectors, in row blocks:
    (n, k) scores (best first) and (n, k) ids; k is clipped to S."""
    n, k = len(queries), min(k, len(ids))
    best_scores = np.full((n, 0), -np.inf, np.float32)
    best_ids = np.zeros((n, 0), np.int64)
    for start in range(0, len(ids), _CHUNK_ROWS):
        block = np.asarray(vectors[start : start + _CHUNK_ROWS], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        candidates = np.concatenate(
            [best_ids, np.broadcast_to(ids[start : start + len(block)], (n, len(block)))], axis=1
        )
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, keep, axis=1)
            candidates = np.take_along_axis(candidates, keep, axis=1)
        best_scores, best_ids = scores, candidates
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)


class SpeakerIndex:
    """Cosine search over the speaker models of ``db``, current at every search.

    Args:
        db: an open speaker database (a service that opens one connection per request
            may set ``index.db`` to the current one before each search, under a lock).
        mean: the scoring state's (E,) training mean (None: no mean subtraction).
        exact_limit: up to this many speakers the base is exact, above it HNSW.
        overlay_limit: changes kept in memory before the base takes them (see above).
        backend: "auto" (FAISS when installed), "faiss" or "numpy".
        store: keep the base beside the database for the next process.

    Example:
        >>> import tempfile
        >>> from lapsv.speakers import Utterance
        >>> db = SpeakerDB(Path(tempfile.mkdtemp()) / "s.db", create=True)
        >>> for i, name in enumerate(["ann", "bob", "cy"]):
        ...     _ = db.enroll(name, [Utterance(name, "-", 1.0, np.eye(3)[i])], model_id="m")
        >>> ids, scores = SpeakerIndex(db).search(np.array([[0.1, 1.0, 0.0]]), 2)
        >>> db.models(ids[0]).names, [f"{score:.3f}" for score in scores[0]]
        (('bob', 'ann'), ['0.995', '0.100'])
    """

    def __init__(
        self,
        db: SpeakerDB,
        *,
        mean: np.ndarray | None = None,
        exact_limit: int = EXACT_LIMIT,
        overlay_limit: int = OVERLAY_LIMIT,
        backend: str = "auto",
        store: bool = True,
    ) -> None:
        if backend not in ("auto", "faiss", "numpy"):
            raise ValueError(f"backend must be auto, faiss or numpy, got {backend!r}")
        self.db, self.mean, self.mean_key = db, mean, mean_key(mean)
        self.exact_limit, self.overlay_limit, self.store = exact_limit, overlay_limit, store
        self.use_faiss = backend == "faiss" or (backend == "auto" and faiss_module() is not None)
        if self.use_faiss and faiss_module() is None:
            raise ValueError("backend='faiss' but faiss is not installed: pip install faiss-cpu")
        self.folder = db.path.with_name(db.path.name + ".index")
        self.generation = -1
        self._set_base(None)
        self._masked: set[int] = set()
        self._overlay: dict[int, np.ndarray] = {}
        if not self._load():
            self.rebuild()

    @property
    def kind(self) -> str:
        return self._base.kind if self._base is not None else "empty"

    def __len__(self) -> int:
        base = 0 if self._base is None else self._base.count
        return base - len(self._masked) + len(self._overlay)

    def refresh(self) -> None:
        """Apply what the database changed since this index's generation (one snapshot)."""
        if self.db.generation == self.generation:
            return
        generation, removed, ids, vectors = self.db.changes_since(self.generation)
        self._masked.update(self._in_base(removed).tolist())
        for speaker in removed.tolist():
            self._overlay.pop(speaker, None)
        self._masked.update(self._in_base(ids).tolist())
        prepared = self._prepare(vectors) if len(ids) else vectors
        self._overlay.update(zip(ids.tolist(), prepared, strict=True))
        self.generation = generation
        if len(self._overlay) + len(self._masked) > self.overlay_limit:
            self._compact()

    def _compact(self) -> None:
        """Move the overlay's new speakers into the base; rebuild when too many base rows
        are hidden (replaced or removed speakers cannot leave an HNSW graph)."""
        if self._base is not None and len(self._masked) <= self.overlay_limit // 2:
            fresh = [speaker for speaker in self._overlay if speaker not in self._masked]
            if fresh:
                ids = np.array(fresh, dtype=np.int64)
                self._base.add(ids, np.stack([self._overlay.pop(i) for i in fresh]))
                self._base_ids = np.sort(np.concatenate([self._base_ids, ids]))
                if self.store:
                    with contextlib.suppress(OSError):
                        self._save()
        if len(self._overlay) + len(self._masked) > self.overlay_limit:
            self.rebuild()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best speakers of each (n, E) raw query embedding: (n, k) speaker ids
        (-1 where the database has fewer) and (n, k) cosine scores, best first."""
        self.refresh()
        queries = self._prepare(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        n = len(queries)
        scores = np.full((n, 0), -np.inf, np.float32)
        ids = np.zeros((n, 0), np.int64)
        if self._base is not None and self._base.count:
            hidden = np.fromiter(self._masked, np.int64, len(self._masked))
            base_scores, base_ids = self._base.search(queries, k, hidden)
            scores, ids = base_scores.astype(np.float32), base_ids.astype(np.int64)
        if self._overlay:
            overlay_ids = np.fromiter(self._overlay, np.int64, len(self._overlay))
            more_scores, more_ids = top_k(
                queries, np.stack(list(self._overlay.values())), overlay_ids, k
            )
            scores = np.concatenate([scores, more_scores], axis=1)
            ids = np.concatenate([ids, more_ids], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        missing = ~np.isfinite(scores) | (ids < 0)
        pad = k - scores.shape[1]
        ids = np.pad(np.where(missing, -1, ids), ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(
            np.where(missing, -np.inf, scores), ((0, 0), (0, pad)), constant_values=-np.inf
        )
        return ids, scores

    def rebuild(self) -> None:
        """Build the base from every model in the database, and store it when asked."""
        generation, _, ids, vectors = self.db.changes_since(-1)
        exact = len(ids) <= self.exact_limit
        if len(ids) == 0:
            self._set_base(None)
        elif self.use_faiss:
            self._set_base(FaissBase.build(ids, self._prepare(vectors), exact=exact))
        else:
            if len(ids) >= NOTICE_LIMIT:
                warnings.warn(
                    f"faiss is not installed: exact numpy search over {len(ids):,} speakers; "
                    "pip install 'lapsv[index]' (faiss-cpu) for fast search",
                    NoFaissWarning,
                    stacklevel=2,
                )
            self._set_base(NumpyBase(ids, self._prepare(vectors)))
        self.generation, self._masked, self._overlay = generation, set(), {}
        if self.store and self._base is not None:
            with contextlib.suppress(OSError):  # a read-only folder: the index stays in memory
                self._save()

    def _in_base(self, ids: np.ndarray) -> np.ndarray:
        """The ``ids`` that are rows of the base (the ones a change must hide there)."""
        known = self._base_ids
        if not len(ids) or not len(known):
            return ids[:0]
        at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        return ids[known[at] == ids]

    def _set_base(self, base: _Base | None) -> None:
        self._base = base
        self._base_ids = np.zeros(0, np.int64) if base is None else np.sort(base.ids())

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        return center_and_normalize(vectors, mean=self.mean).astype(np.float32, copy=False)

    def _header(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "model_id": self.db.model_id,
            "mean": self.mean_key,
            "kind": self._base.kind if self._base is not None else "empty",
        }

    def _save(self) -> None:
        tag = f"{self.mean_key}-{self.generation}-{os.getpid()}-{time.time_ns()}"
        path = self.folder / f"base-{tag}{self._base.suffix}"
        self.folder.mkdir(exist_ok=True)
        self._base.save(path)
        header = {**self._header(), "generation": self.generation, "file": path.name}
        atomic_write_text(self.folder / f"index-{self.mean_key}.json", json.dumps(header))
        keep = {p.name for p in self._base.files(path)}
        for old in self.folder.glob(f"base-{self.mean_key}-*"):
            if old.name not in keep and time.time() - old.stat().st_mtime > 60:
                old.unlink(missing_ok=True)  # readers that still map it keep their copy

    def _load(self) -> bool:
        """Use the stored base when it is of this model, mean and backend (True)."""
        header_path = self.folder / f"index-{self.mean_key}.json"
        try:
            header = json.loads(header_path.read_text())
            wanted = self._header()
            if any(header.get(key) != wanted[key] for key in ("format", "model_id", "mean")):
                return False
            path = self.folder / Path(header["file"]).name
            if header["kind"] == "numpy" and not self.use_faiss:
                self._set_base(NumpyBase.load(path))
            elif header["kind"].startswith("faiss") and self.use_faiss:
                self._set_base(FaissBase.load(path, header["kind"]))
            else:
                return False
            self.generation = int(header["generation"])
        except (OSError, ValueError, KeyError, RuntimeError, TypeError):
            self._set_base(None)
            self.generation = -1
            return False
        self.refresh()
        return True
