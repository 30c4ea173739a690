"""Speaker diarization: who spoke when in a conversation, with any lapsv model.

audio -> :mod:`~lapsv.diarization.vad` (Silero) -> :mod:`~lapsv.diarization.windows` ->
:mod:`~lapsv.diarization.embedding` (the Speaker facade) ->
:mod:`~lapsv.diarization.clustering` -> :mod:`~lapsv.diarization.segments` ->
:mod:`~lapsv.diarization.rttm`; :mod:`~lapsv.diarization.score` computes DER / JER with
pyannote.metrics. :func:`diarize` (in :mod:`~lapsv.diarization.pipeline`) runs it all.
"""

from lapsv.diarization.pipeline import Diarization, DiarizeOptions, diarize
from lapsv.diarization.rttm import RTTMError, read_references, read_rttm, write_rttm
from lapsv.diarization.score import DiarizationScore, score_diarization
from lapsv.diarization.segments import Segment
from lapsv.diarization.vad import SileroVAD, VADOptions

__all__ = [
    "Diarization",
    "DiarizationScore",
    "DiarizeOptions",
    "RTTMError",
    "Segment",
    "SileroVAD",
    "VADOptions",
    "diarize",
    "read_references",
    "read_rttm",
    "score_diarization",
    "write_rttm",
]
