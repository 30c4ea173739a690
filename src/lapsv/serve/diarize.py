"""The pieces of ``POST /v1/diarize`` that are not HTTP: its options, the one Silero VAD of
the service, and the file id of an upload. The verb itself is
:meth:`lapsv.serve.service.Service.diarize`; it calls :func:`lapsv.diarization.diarize`,
the function ``lapsv diarize`` calls, on the decoded upload.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import PurePosixPath

from lapsv.diarization import DiarizeOptions, SileroVAD


def diarize_options(
    *,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 10,
    vad_threshold: float | None = None,
) -> DiarizeOptions:
    """The library options of a request's form fields (ConfigError for impossible ones:
    a count below 1, ``min_speakers`` above ``max_speakers``, a VAD threshold outside (0, 1)).

    >>> diarize_options(num_speakers=2).count.exact
    2
    >>> diarize_options(min_speakers=3, max_speakers=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lapsv.errors.ConfigError: min_speakers (3) is larger than max_speakers (2)
    """
    vad = DiarizeOptions().vad  # the defaults of `lapsv diarize`
    if vad_threshold is not None:
        vad = dataclasses.replace(vad, threshold=vad_threshold)
    return DiarizeOptions(
        num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers, vad=vad
    )


def file_id_of(filename: str) -> str:
    """The RTTM file id of an upload: its file name's stem (``"audio"`` without one).

    >>> file_id_of("meeting.wav"), file_id_of(""), file_id_of("../x/call.2.flac")
    ('meeting', 'audio', 'call.2')
    """
    return (PurePosixPath(filename).stem if filename else "") or "audio"


class SharedVAD:
    """One :class:`~lapsv.diarization.SileroVAD` for the service, loaded at first use.

    Thread-safe: the ONNX session is shared, and each
    :meth:`~lapsv.diarization.SileroVAD.probabilities` call keeps its recurrent state in
    local variables, so any number of recordings may use it at once.
    """

    def __init__(self) -> None:
        self._vad: SileroVAD | None = None
        self._lock = threading.Lock()

    def get(self) -> SileroVAD:
        """The loaded VAD (VADError, whose message says what to install, without it)."""
        with self._lock:
            if self._vad is None:
                self._vad = SileroVAD()
            return self._vad
