"""Embedding extraction shared by the processes of an ``accelerate launch`` job, in
resumable chunk parts; one plain process (no ``WORLD_SIZE``) runs the same code alone.

How a job runs (:func:`extract_sharded`), every process doing the same steps:

1. The job key: a hash of the model id (:attr:`~lapsv.speaker.Speaker.model_id`, a
   content hash of the weights), the (id, path) input list, the chunk size and
   ``max_seconds``. Parts live in ``.<output name>.parts/<key>/`` beside the output, so
   another model or other inputs never reuse them.
2. Each process reads the headers of every W-th input (``durations-<r>-of-<W>.npy``).
   Together they give the plan: all inputs sorted by length, longest first (the order
   :func:`~lapsv.inference.extract_embeddings` uses), cut into chunks of ``chunk_size``.
   The plan does not depend on the number of processes.
3. Every process lists the chunk parts already written (``chunk-<c>.npz``), waits for the
   others, and takes its share of the unfinished chunks (:func:`assign_chunks`: balanced
   by seconds of audio, the same answer in every process). A chunk is embedded and its part written
   atomically (:func:`~lapsv.files.atomic_path`): a killed job loses at most the chunks
   that were in flight, and a rerun of the same command redoes only those.
4. The main process (rank 0) merges the parts, in plan order, into what one process would
   have returned (same rows, order and failures); the caller writes the output and calls
   :meth:`Extraction.finish`, which removes the parts.

Across machines, the parts must be on a filesystem every machine sees (NFS, Lustre, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import signal
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lapsv.audio import audio_duration
from lapsv.embeddings import EmbeddingSet
from lapsv.errors import AudioError, LapsvError
from lapsv.files import atomic_path, atomic_write_text, remove_directory
from lapsv.inference import DEFAULT_MAX_SECONDS, Embedder, extract_embeddings
from lapsv.process_group import leave_process_group_at_exit

CHUNK_BATCHES = 16
"""A chunk part holds ``CHUNK_BATCHES * batch_size`` utterances unless told otherwise."""
PARTS_FORMAT = 1
BARRIER_TIMEOUT = datetime.timedelta(hours=1)  # slow nodes wait at a barrier this long
FAILPOINT_ENV = "LAPSV_FAILPOINT"  # the variable of lapsv.training.faults, same meaning


class PartsError(LapsvError, OSError):
    """A chunk part is missing or is not one of this job's; rerunning the command redoes it."""


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place in a job: ``rank`` of ``world`` (``local_rank`` on its machine),
    ``device`` it embeds on, and accelerate's ``PartialState`` (None for one process).

    >>> Processes().is_main, Processes().world
    (True, 1)
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (nothing to wait for alone)."""
        if self.state is not None:
            self.state.wait_for_everyone()


def current_processes(device: str | torch.device = "cpu") -> Processes:
    """The processes of this job, from accelerate's ``PartialState``.

    Without ``WORLD_SIZE`` (or with 1) this is one plain process: accelerate is not even
    imported. Under ``accelerate launch`` / ``torchrun`` the process group is joined: gloo
    when ``device`` is not CUDA, NCCL otherwise; ``device="cuda"`` becomes the process's
    local GPU (an explicit ``cuda:N`` is kept).
    """
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return Processes(device=str(device))
    from accelerate import PartialState  # heavy, and only needed for several processes

    wanted = torch.device(device)
    state = PartialState(cpu=wanted.type != "cuda", timeout=BARRIER_TIMEOUT)
    leave_process_group_at_exit()
    if wanted.type == "cuda" and wanted.index is None:
        device = state.device
    return Processes(
        state.process_index, state.num_processes, state.local_process_index, str(device), state
    )


def parts_folder(output: str | Path) -> Path:
    """The hidden folder beside ``output`` that holds the parts of its unfinished jobs."""
    output = Path(output)
    return output.parent / f".{output.name}.parts"


def job_key(
    model_id: str,
    items: Sequence[tuple[str, str | Path]],
    *,
    chunk_size: int,
    max_seconds: float | None,
) -> str:
    """16 hex digits naming a job: the model, the inputs and what changes the parts."""
    digest = hashlib.sha256(f"{PARTS_FORMAT}\0{model_id}\0{chunk_size}\0{max_seconds}\0".encode())
    for utt, path in items:
        digest.update(f"{utt}\0{path}\n".encode())
    return digest.hexdigest()[:16]


def plan_chunks(durations: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Item indices of each chunk: longest first, as one process sorts them (stable, so
    ties keep the input order); unreadable items (NaN) last, in input order.

    >>> [c.tolist() for c in plan_chunks(np.array([1.0, np.nan, 3.0, 1.0]), 2)]
    [[2, 0], [3, 1]]
    """
    readable = np.flatnonzero(~np.isnan(durations))
    order = readable[np.argsort(-durations[readable], kind="stable")]
    order = np.concatenate([order, np.flatnonzero(np.isnan(durations))]).astype(np.int64)
    return [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]


def assign_chunks(loads: Sequence[float], world: int) -> list[list[int]]:
    """The chunks (positions in ``loads``, their seconds of audio) each process embeds:
    each chunk in turn goes to the process with the least audio so far (the lowest rank
    on a tie), which balances the length-sorted chunks better than taking turns.

    >>> assign_chunks([5.5, 4.5, 3.5, 2.5], 2)
    [[0, 3], [1, 2]]
    """
    shares: list[list[int]] = [[] for _ in range(world)]
    totals = [0.0] * world
    for position, load in enumerate(loads):
        rank = totals.index(min(totals))
        shares[rank].append(position)
        totals[rank] += load
    return shares


@dataclasses.dataclass
class Extraction:
    """What :func:`extract_sharded` did. ``embeddings``: the merged set on the main
    process (rows and failures as one process returns them), None on the others;
    ``newly_embedded``: utterances embedded by this run; ``reused`` / ``reused_chunks``:
    utterances and chunk parts finished by an earlier, interrupted run; ``work``: the
    folder of this job's parts."""

    embeddings: EmbeddingSet | None
    newly_embedded: int
    reused: int
    reused_chunks: int
    chunks: int
    work: Path

    def finish(self) -> None:
        """Remove this job's parts (main process; call it once the output is written)."""
        if self.embeddings is None or not self.work.exists():
            return
        remove_directory(self.work)
        with contextlib.suppress(OSError):  # left while another job's parts are in it
            self.work.parent.rmdir()


def extract_sharded(
    model: Embedder,
    items: Sequence[tuple[str, str | Path]],
    output: str | Path,
    *,
    model_id: str,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    chunk_size: int | None = None,
    processes: Processes | None = None,
) -> Extraction:
    """Embed (id, path) ``items`` with every process of the job, resumably.

    Every process calls this with the same items (see the module docstring). Parts go to
    :func:`parts_folder` of ``output`` (the file the caller writes next).

    Args:
        model: the embedder, already on ``device``.
        model_id: the content id of its weights: parts of another model are never used.
        chunk_size: utterances per part (default ``CHUNK_BATCHES * batch_size``).
        processes: this process's place in the job (default :func:`current_processes`).

    Returns:
        An :class:`Extraction`; its ``embeddings`` equal :func:`extract_embeddings` of all
        items (up to batch composition) on the main process, and are None elsewhere.
    """
    processes = processes or current_processes(device)
    chunk_size = chunk_size or CHUNK_BATCHES * batch_size
    key = job_key(model_id, items, chunk_size=chunk_size, max_seconds=max_seconds)
    work = parts_folder(output) / key
    processes.barrier()  # the main process has checked the output before anything is written
    work.mkdir(parents=True, exist_ok=True)
    own = _shard_durations(items, work, processes)
    done = {c for c in range(-(-len(items) // chunk_size)) if _part_path(work, c).is_file()}
    if processes.is_main and not (work / "job.json").exists():
        _describe(work, output, model_id, len(items), chunk_size)
    processes.barrier()  # every process has listed the same finished parts
    durations = _all_durations(work, len(items), processes.world, own, processes.rank)
    chunks = plan_chunks(durations, chunk_size)
    todo = [c for c in range(len(chunks)) if c not in done]
    loads = [float(np.nansum(durations[chunks[c]])) for c in todo]
    mine = [todo[p] for p in assign_chunks(loads, processes.world)[processes.rank]]
    show = progress and processes.is_main
    bar = tqdm(
        total=sum(len(chunks[c]) for c in mine),
        desc=f"embedding (process 0 of {processes.world})" if processes.world > 1 else "embedding",
        unit="utt",
        disable=not show or len(mine) <= 1,
    )
    for finished, c in enumerate(mine, start=1):
        part = extract_embeddings(
            model,
            [items[i] for i in chunks[c]],
            batch_size=batch_size,
            device=device,
            progress=show and len(mine) == 1,
            max_seconds=max_seconds,
        )
        _write_part(_part_path(work, c), part, key)
        bar.update(len(chunks[c]))
        _failpoint(processes.rank, finished)
    bar.close()
    processes.barrier()  # every chunk has its part
    if not processes.is_main:
        return Extraction(None, 0, 0, len(done), len(chunks), work)
    unreadable = {items[i][0] for i in np.flatnonzero(np.isnan(durations))}
    merged, sizes = _merge(work, len(chunks), key, unreadable, model.embed_dim)
    new = sum(sizes[c][0] for c in range(len(chunks)) if c not in done)
    reused = sum(sum(sizes[c]) for c in done)
    return Extraction(merged, new, reused, len(done), len(chunks), work)


def _shard_durations(
    items: Sequence[tuple[str, str | Path]], work: Path, processes: Processes
) -> np.ndarray:
    """Durations (s, NaN: unreadable) of this process's items ``rank::world``, read from
    the headers once and kept in the job's folder for a rerun."""
    path = work / f"durations-{processes.rank:05d}-of-{processes.world:05d}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged file: read the headers again
    durations = np.full(len(items[processes.rank :: processes.world]), np.nan)
    for row, (_, audio) in enumerate(items[processes.rank :: processes.world]):
        with contextlib.suppress(AudioError):  # extract_embeddings records the reason
            durations[row] = audio_duration(audio)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, durations)
    return durations


def _all_durations(work: Path, count: int, world: int, own: np.ndarray, rank: int) -> np.ndarray:
    """(count,) durations of every item, from the shards of all processes."""
    durations = np.full(count, np.nan)
    for other in range(world):
        path = work / f"durations-{other:05d}-of-{world:05d}.npy"
        shard = own if other == rank else np.load(path, allow_pickle=False)
        if len(shard) != len(durations[other::world]):
            raise PartsError(f"{path}: {len(shard)} durations, not {len(durations[other::world])}")
        durations[other::world] = shard
    return durations


def _part_path(work: Path, chunk: int) -> Path:
    return work / f"chunk-{chunk:06d}.npz"


def _describe(work: Path, output: str | Path, model_id: str, count: int, chunk_size: int) -> None:
    """``job.json``: what the parts in ``work`` are for, for a person looking at them."""
    about = {
        "format": PARTS_FORMAT,
        "output": str(output),
        "model_id": model_id,
        "items": count,
        "chunk_size": chunk_size,
        "chunks": -(-count // chunk_size),
        "note": "chunk parts of an unfinished lapsv extraction; rerun the command to finish "
        "it, or delete this folder to drop the work",
    }
    atomic_write_text(work / "job.json", json.dumps(about, indent=1) + "\n")


def _write_part(path: Path, part: EmbeddingSet, key: str) -> None:
    """One chunk's embeddings and failures in one .npz, atomically (no pickles inside)."""
    failed_ids = [utt for utt, _ in part.failures]
    reasons = [reason for _, reason in part.failures]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            key=np.array(key),
            ids=np.array(part.ids, dtype=str),
            embeddings=part.embeddings,
            seconds=part.seconds,
            failed_ids=np.array(failed_ids, dtype=str),
            failed_reasons=np.array(reasons, dtype=str),
        )


def _read_part(path: Path, key: str) -> EmbeddingSet:
    """A chunk part written by :func:`_write_part` for job ``key``. One that cannot be
    used is deleted before the error, so that a rerun embeds its chunk again."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = str(data["key"])
            reasons = map(str, data["failed_reasons"])
            failures = list(zip(map(str, data["failed_ids"]), reasons, strict=True))
            part = EmbeddingSet(list(map(str, data["ids"])), data["embeddings"], data["seconds"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        path.unlink(missing_ok=True)
        raise PartsError(
            f"chunk part {path} is missing or unreadable ({error}); rerun the same command "
            "to embed that chunk again"
        ) from error
    if stored != key:
        path.unlink()
        raise PartsError(f"{path} was written by another job (removed); rerun the command")
    part.failures = failures
    return part


def _merge(
    work: Path, count: int, key: str, unreadable: set[str], dim: int
) -> tuple[EmbeddingSet, list[tuple[int, int]]]:
    """The parts joined in plan order, and (embedded, failed) counts of each part.

    Failures are listed as one process lists them: files whose header cannot be read
    first, then the others in the order they were met.
    """
    parts = [_read_part(_part_path(work, c), key) for c in range(count)]
    failures = [f for p in parts for f in p.failures]
    failures.sort(key=lambda failure: failure[0] not in unreadable)  # stable
    merged = EmbeddingSet(
        [utt for p in parts for utt in p.ids],
        np.concatenate([p.embeddings for p in parts if p.ids] or [np.zeros((0, dim), np.float32)]),
        np.concatenate([p.seconds for p in parts if p.ids] or [np.zeros(0, np.float32)]),
        failures,
    )
    return merged, [(len(p.ids), len(p.failures)) for p in parts]


def _failpoint(rank: int, finished: int) -> None:
    """Test hook: ``LAPSV_FAILPOINT=after-chunk-rank<R>:<n>`` makes process R kill itself
    (SIGKILL, no clean-up) once it has written its n-th chunk part of this run."""
    if os.environ.get(FAILPOINT_ENV) == f"after-chunk-rank{rank}:{finished}":
        os.kill(os.getpid(), signal.SIGKILL)
