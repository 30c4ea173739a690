"""Transcripts with speakers: Whisper's words and lapsv's voices from one encoder pass.

:class:`~lapsv.transcription.pipeline.Transcriber` runs it all;
:mod:`~lapsv.transcription.decoder` wraps Whisper's decoder,
:mod:`~lapsv.transcription.attribution` gives words their speakers and
:mod:`~lapsv.transcription.formats` writes JSON, SRT, WebVTT and plain text.
"""

from lapsv.transcription.formats import FORMATS, parse_formats, render, write_transcript
from lapsv.transcription.pipeline import TranscribeOptions, Transcriber, transcribe
from lapsv.transcription.transcript import Transcript, TranscriptSegment, Word

__all__ = [
    "FORMATS",
    "TranscribeOptions",
    "Transcriber",
    "Transcript",
    "TranscriptSegment",
    "Word",
    "parse_formats",
    "render",
    "transcribe",
    "write_transcript",
]
