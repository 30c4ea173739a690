"""The service's verbs on conversations: ``diarize`` (who spoke when) and ``transcribe``
(who said what). They run what ``lapsv diarize`` and ``lapsv transcribe`` run
(:func:`~lapsv.diarization.diarize`, :class:`~lapsv.transcription.Transcriber`) on the
decoded upload, on the model's one thread; :class:`~lapsv.serve.service.Service` has them.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from lapsv.diarization import diarize
from lapsv.diarization.vad import VADError
from lapsv.errors import AudioError, ConfigError, ModelLoadError
from lapsv.serve.diarize import diarize_options, file_id_of
from lapsv.serve.uploads import ServiceError, Upload, display_name
from lapsv.speaker import Speaker
from lapsv.transcription import TranscribeOptions, Transcriber, Transcript, render
from lapsv.transcription.formats import parse_formats


class SharedTranscriber:
    """The service's :class:`~lapsv.transcription.Transcriber`, loaded at first use
    (the decoder of the model's Whisper source); ServiceError 501 for a model that cannot
    transcribe."""

    def __init__(self, model: Speaker) -> None:
        self.model = model
        self._transcriber: Transcriber | None = None
        self._lock = threading.Lock()

    def get(self) -> Transcriber:
        with self._lock:
            if self._transcriber is None:
                try:
                    self._transcriber = Transcriber(self.model)
                except (ConfigError, ModelLoadError) as error:
                    raise ServiceError(501, f"this service cannot transcribe: {error}") from None
            return self._transcriber


class ConversationVerbs:
    """``diarize`` and ``transcribe`` of :class:`~lapsv.serve.service.Service`, which
    gives them ``model``, ``vad``, ``transcriber``, ``batcher`` and its request steps."""

    async def diarize(
        self,
        upload: Upload,
        *,
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 10,
        name_threshold: float | None = None,
        vad_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Who spoke when in one recording (``lapsv diarize``): segments with SPEAKER_xx
        labels, or the names of enrolled speakers that the identify rule recognises
        (``name_threshold``, default: the server's threshold, else LLR 0 when calibrated)."""
        name_threshold = self._threshold(name_threshold, "name_threshold")
        try:
            options = diarize_options(
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                vad_threshold=vad_threshold,
            )
        except ConfigError as error:
            raise ServiceError(422, str(error)) from None
        result = await self._on_conversation(
            upload, name_threshold, functools.partial(diarize, self.model, options=options)
        )
        return {"model_id": self.model.model_id, **result.to_json()}

    async def transcribe(
        self,
        upload: Upload,
        *,
        language: str | None = None,
        word_timestamps: bool = True,
        formats: str = "",
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 10,
        name_threshold: float | None = None,
        vad_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Who said what in one recording (``lapsv transcribe``): segments with speakers,
        text and words; ``formats`` ("srt,vtt,txt") adds those renderings."""
        name_threshold = self._threshold(name_threshold, "name_threshold")
        try:
            diarization = diarize_options(
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                vad_threshold=vad_threshold,
            )
            rendered = parse_formats(formats) if formats.strip() else ()
        except ConfigError as error:
            raise ServiceError(422, str(error)) from None
        options = TranscribeOptions(
            language=language, word_timestamps=word_timestamps, diarization=diarization
        )

        def transcribe(wave: np.ndarray, **arguments: Any) -> Transcript:
            return self.transcriber.get().transcribe(wave, options=options, **arguments)

        result = await self._on_conversation(upload, name_threshold, transcribe)
        answer = {"model_id": self.model.model_id, **result.to_json(), "text": result.text}
        if rendered:
            answer["rendered"] = {f: render(result, f) for f in rendered if f != "json"}
        return answer

    async def _on_conversation(
        self, upload: Upload, name_threshold: float | None, verb: Callable[..., Any]
    ) -> Any:
        """``verb(wave, sample_rate=, file_id=, speakers=, name_threshold=, vad=)`` on the
        decoded upload, on the model's one thread; its errors as ServiceErrors."""
        await self.start()
        [item] = await asyncio.to_thread(self._decode, [upload])
        file_id = file_id_of(display_name(upload.filename, ""))

        def work() -> Any:
            with self._database() as db:
                return verb(
                    item.wave,
                    sample_rate=self.model.sample_rate,
                    file_id=file_id,
                    speakers=db if db.count() else None,
                    name_threshold=name_threshold,
                    vad=self.vad.get(),
                )

        try:
            return await self.batcher.run(work)
        except AudioError as error:
            raise ServiceError(422, f"{upload.field}: {error.reason}") from None
        except ConfigError as error:
            raise ServiceError(422, f"{upload.field}: {error}") from None
        except VADError as error:
            raise ServiceError(503, f"speech detection is not available: {error}") from None
