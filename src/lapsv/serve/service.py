"""The verbs of ``lapsv serve`` on uploaded recordings: embed, verify, identify, diarize,
enrol, delete, list. No HTTP here: :mod:`lapsv.serve.app` maps them to routes and
:class:`ServiceError` to status codes.

Scores come from the one scoring path, as in the CLI: two recordings are compared by
:func:`~lapsv.scoring.state.verify_embeddings` (what ``lapsv verify`` prints), a recording
and enrolled speakers by :func:`~lapsv.identification.identify_embeddings` (what ``lapsv
identify`` prints; verifying against a name reads that name's row of it). A conversation is
diarized by :func:`~lapsv.diarization.diarize` (what ``lapsv diarize`` runs). An upload is
written to a private temporary file (mode 0600, in a 0700 folder of this process), decoded
by :func:`~lapsv.audio.load_audio` and deleted at once; the client's file name is only ever
shown, never used as a path. Speaker names are checked by the rule every entry point uses
(:func:`~lapsv.speakers.check_speaker_name`) and reach SQLite only as parameters
(:class:`~lapsv.speakers.SpeakerDB`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv import __version__
from lapsv.audio import audio_duration, load_audio
from lapsv.errors import AudioError
from lapsv.identification import (
    Identification,
    cohort_statistics_of,
    identify_embeddings,
    verify_enrolled,
)
from lapsv.inference import DEFAULT_MAX_SECONDS
from lapsv.scoring.state import Verification, verify_embeddings
from lapsv.serve.batching import EmbeddingBatcher
from lapsv.serve.conversations import ConversationVerbs, SharedTranscriber
from lapsv.serve.diarize import SharedVAD
from lapsv.serve.limits import Limits
from lapsv.serve.metrics import Metrics
from lapsv.serve.uploads import Decoded, ServiceError, Upload, display_name
from lapsv.speaker import Speaker
from lapsv.speakers import (
    SpeakerDB,
    SpeakerDBError,
    SpeakerNameError,
    Utterance,
    content_key,
)
from lapsv.speakers import check_speaker_name as check_name
from lapsv.speakers.index import SpeakerIndex

MAX_TOP_K = 100


def check_speaker_name(name: str) -> str:
    """``name`` in NFC if the rule of every entry point accepts it
    (:func:`lapsv.speakers.check_speaker_name`), else ServiceError 422 with its message.

    >>> check_speaker_name("Ana María")
    'Ana María'
    >>> check_speaker_name("x'; DROP TABLE speakers; --")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lapsv.serve.uploads.ServiceError: bad speaker name "x'; DROP TABLE speakers; --": 1-64 ...
    """
    try:
        return check_name(name)
    except SpeakerNameError as error:
        raise ServiceError(422, str(error)) from None


class Service(ConversationVerbs):
    """Embed, verify, identify, enrol on uploads, with one model and one speaker database.

    Args:
        model: the speaker model; only the batcher's worker thread runs it.
        db: the speaker database file, created if missing; it must hold embeddings of
            ``model`` (checked here, so a server never starts on the wrong database).
        model_name: how the database names the model (``lapsv enroll``'s MODEL).
        limits: the audio duration limit applies here (the others in the guard).
        threshold: the decision threshold when a request gives none (default: LLR 0 for a
            calibrated model, else no decision, as ``lapsv verify``).
        max_batch, batch_size, max_wait_ms: dynamic batching (:class:`EmbeddingBatcher`).
        max_seconds: longer recordings are embedded in windows, averaged.
        metrics: where model batches are counted (a new :class:`Metrics` by default).
    """

    def __init__(
        self,
        model: Speaker,
        db: str | Path,
        *,
        model_name: str = "",
        limits: Limits | None = None,
        threshold: float | None = None,
        max_batch: int = 32,
        batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.db_path = Path(db)
        self.model_name = model_name
        self.limits = limits or Limits()
        self.threshold = threshold
        self.metrics = metrics or Metrics()
        with SpeakerDB(self.db_path, create=True) as database:
            database.check_model(model.model_id, model_name=model_name)
        self.batcher = EmbeddingBatcher(
            model,
            max_batch=max_batch,
            batch_size=batch_size,
            max_wait_ms=max_wait_ms,
            max_seconds=max_seconds,
            on_batch=self.metrics.observe_batch,
        )
        self.upload_dir: Path | None = None
        self._index: SpeakerIndex | None = None  # built at the first identify
        self._index_lock = threading.Lock()
        self.vad = SharedVAD()  # Silero VAD, loaded at the first diarization
        self.transcriber = SharedTranscriber(model)  # Whisper's decoder, at the first transcript

    async def start(self) -> None:
        """Start the batcher and make the private folder uploads are decoded in (0700)."""
        if self.upload_dir is None:
            self.upload_dir = Path(tempfile.mkdtemp(prefix="lapsv-serve-"))
        await self.batcher.start()

    async def close(self) -> None:
        """Stop the batcher and remove the upload folder."""
        await self.batcher.close()
        if self.upload_dir is not None:
            shutil.rmtree(self.upload_dir, ignore_errors=True)
            self.upload_dir = None

    def health(self) -> dict[str, Any]:
        model = self.model
        return {
            "status": "ok",
            "version": __version__,
            "model_id": model.model_id,
            "embed_dim": model.embed_dim,
            "sample_rate": model.sample_rate,
        }

    # --- the verbs --------------------------------------------------------------------

    async def embed(self, upload: Upload) -> dict[str, Any]:
        """The raw embedding of one recording (what ``lapsv embed`` writes)."""
        [(item, vector)] = await self._embed([upload])
        return {
            "model_id": self.model.model_id,
            "embed_dim": int(vector.size),
            "seconds": item.seconds,
            "embedding": vector.astype(np.float64).tolist(),
        }

    async def verify(
        self,
        a: Upload,
        b: Upload | None = None,
        *,
        name: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """Recording ``a`` against recording ``b`` or the enrolled speaker ``name``."""
        threshold = self._threshold(threshold)
        if (b is None) == (name is None):
            raise ServiceError(
                422, "give a second recording `b` or the `name` of an enrolled speaker, not both"
            )
        if name is not None:
            name = check_speaker_name(name)
            await asyncio.to_thread(self._with_db, lambda db: self._known(db, name))  # first
            [(item, vector)] = await self._embed([a])
            result = await asyncio.to_thread(
                self._verify_enrolled, vector, item.seconds, name, threshold
            )
        else:
            [(item_a, ea), (item_b, eb)] = await self._embed([a, b])
            seconds = (item_a.seconds, item_b.seconds)
            result = verify_embeddings(self.model.scoring, ea, eb, seconds, threshold=threshold)
        answer = verification_json(result, mean_subtracted=self.model.scoring.mean is not None)
        against = {"b": display_name(b.filename, "b")} if b else {"name": name}
        return {
            "model_id": self.model.model_id,
            "a": display_name(a.filename, "a"),
            **against,
            **answer,
        }

    async def identify(
        self, uploads: Sequence[Upload], *, top_k: int = 3, threshold: float | None = None
    ) -> dict[str, Any]:
        """The top-k enrolled speakers of each recording, and the answer (``lapsv identify``)."""
        threshold = self._threshold(threshold)
        if not 1 <= top_k <= MAX_TOP_K:
            raise ServiceError(422, f"top_k must be 1 to {MAX_TOP_K}, got {top_k}")
        if not uploads:
            raise ServiceError(422, "no recording to identify: upload one or more as `audio`")
        embedded = await self._embed(uploads)
        answers = await asyncio.to_thread(self._identify, embedded, top_k, threshold)
        return {
            "model_id": self.model.model_id,
            "results": [identification_json(answer) for answer in answers],
        }

    async def enroll(
        self, name: str, uploads: Sequence[Upload], *, replace: bool = False
    ) -> dict[str, Any]:
        """Add recordings of speaker ``name`` (``replace``: drop its earlier ones first)."""
        name = check_speaker_name(name)
        if not uploads:
            raise ServiceError(422, "no recording to enrol: upload one or more as `audio`")
        embedded = await self._embed(uploads)
        utterances = [
            Utterance(
                item.key,
                f"upload:{display_name(item.upload.filename, 'audio')}",
                item.seconds,
                vector,
            )
            for item, vector in embedded
        ]
        model = self.model

        def write(db: SpeakerDB) -> Any:
            return db.enroll(
                name,
                utterances,
                model_id=model.model_id,
                model_name=self.model_name,
                replace=replace,
                stats=cohort_statistics_of(model),  # as `lapsv enroll` stores them
            )

        result = await asyncio.to_thread(self._with_db, write)
        return {"model_id": model.model_id, **dataclasses.asdict(result)}

    async def delete(self, name: str) -> dict[str, Any]:
        """Remove speaker ``name`` and its recordings."""
        name = check_speaker_name(name)

        def remove(db: SpeakerDB) -> int:
            self._known(db, name)
            return db.delete(name)

        count = await asyncio.to_thread(self._with_db, remove)
        return {"deleted": name, "utterances": count}

    async def speakers(self) -> dict[str, Any]:
        """Every enrolled speaker (``lapsv speakers list``)."""

        def listing(db: SpeakerDB) -> dict[str, Any]:
            meta = db.meta()
            return {
                "model_id": meta.get("model_id"),
                "model_name": meta.get("model_name"),
                "speakers": [dataclasses.asdict(s) for s in db.speakers()],
            }

        return await asyncio.to_thread(self._with_db, listing)

    # --- the steps ----------------------------------------------------------------------

    def _threshold(self, given: float | None, field: str = "threshold") -> float | None:
        if given is not None and not math.isfinite(given):
            raise ServiceError(422, f"{field} must be a finite number, got {given}")
        return self.threshold if given is None else float(given)

    async def _embed(self, uploads: Sequence[Upload]) -> list[tuple[Decoded, np.ndarray]]:
        """Decode (in a thread) and embed (batched with other requests) ``uploads``."""
        await self.start()
        self.batcher.expect(len(uploads))
        try:
            decoded = await asyncio.to_thread(self._decode, uploads)
        except BaseException:
            self.batcher.expect(-len(uploads))
            raise
        waves = [item.wave for item in decoded]
        vectors = await self.batcher.embed_many(waves, expected=len(uploads))
        return list(zip(decoded, vectors, strict=True))

    def _decode(self, uploads: Sequence[Upload]) -> list[Decoded]:
        """Each upload through a private temporary file, deleted at once; the request's
        audio must last at most ``max_audio_seconds`` in all."""
        rate, limit = self.model.sample_rate, self.limits.max_audio_seconds
        total, out = 0.0, []
        for upload in uploads:
            fd, name = tempfile.mkstemp(dir=self.upload_dir, suffix=".audio")
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(upload.data)
                seconds = audio_duration(path)
                if total + seconds > limit:
                    raise ServiceError(
                        413,
                        f"{upload.field}: audio too long: the request's recordings last "
                        f"{total + seconds:.1f} s, the limit is {limit:g} s (max_audio_seconds)",
                    )
                wave = load_audio(path, sample_rate=rate, max_seconds=limit - total)
                key = content_key(path)
            except AudioError as error:
                reason = error.reason.replace(str(path), upload.field)
                raise ServiceError(422, f"{upload.field}: {reason}") from None
            finally:
                path.unlink(missing_ok=True)
            total += len(wave) / rate
            out.append(Decoded(upload, wave, len(wave) / rate, key))
        return out

    @contextlib.contextmanager
    def _database(self) -> Iterator[SpeakerDB]:
        """The speaker database, opened for one operation (one connection per thread)."""
        try:
            with SpeakerDB(self.db_path) as db:
                yield db
        except SpeakerDBError as error:
            message = str(error).replace(str(self.db_path), "the speaker database")
            raise ServiceError(503, message) from None

    def _with_db(self, action: Any) -> Any:
        with self._database() as db:
            return action(db)

    @staticmethod
    def _known(db: SpeakerDB, name: str) -> None:
        if db.speaker_id(name) is None:
            raise ServiceError(404, f"no speaker named {name!r} is enrolled")

    def _identify(
        self, embedded: list[tuple[Decoded, np.ndarray]], top_k: int, threshold: float | None
    ) -> list[Identification]:
        with self._database() as db, self._index_lock:
            if db.count() == 0:
                raise ServiceError(
                    409, "no speaker is enrolled yet: enrol one with POST /v1/speakers/{name}"
                )
            if self._index is None:  # one index for the service, current at every search
                self._index = SpeakerIndex(db, mean=self.model.scoring.mean)
            self._index.db = db
            return identify_embeddings(
                db,
                self.model,
                np.stack([vector for _, vector in embedded]),
                [item.seconds for item, _ in embedded],
                [display_name(item.upload.filename, item.upload.field) for item, _ in embedded],
                top_k=top_k,
                threshold=threshold,
                index=self._index,
            )

    def _verify_enrolled(
        self, vector: np.ndarray, seconds: float, name: str, threshold: float | None
    ) -> Verification:
        """Recording against speaker ``name``: the scores ``identify`` gives that speaker."""
        with self._database() as db:
            result = verify_enrolled(db, self.model, vector, seconds, name, threshold=threshold)
        if result is None:
            raise ServiceError(404, f"no speaker named {name!r} is enrolled")
        return result


def verification_json(result: Verification, *, mean_subtracted: bool) -> dict[str, Any]:
    """A verification as ``lapsv verify`` prints it: scores, decision, threshold, source."""
    score_name = (
        "LLR" if result.llr is not None else ("AS-norm" if result.asnorm is not None else "cosine")
    )
    decision = None if result.same is None else ("same" if result.same else "different")
    return {
        **result.as_dict(),
        "score_name": score_name,
        "mean_subtracted": mean_subtracted,
        "decision": decision,
    }


def identification_json(answer: Identification) -> dict[str, Any]:
    """An identification as ``lapsv identify`` prints it: answer and top-k candidates."""
    return dataclasses.asdict(answer)
