"""``transcribe``: who said what, with Whisper's words and a lapsv model's voices.

audio -> Silero VAD (speech regions, diarization windows) -> for each 30 s window, as
Whisper seeks: one encoder pass (every hidden state) -> the decoder reads the last one
(words with timestamps) -> the diarization windows are embedded (below) -> clustering (as
``diarize``) -> each segment and word gets the speaker who covers most of it
(:mod:`~lapsv.transcription.attribution`).

The encoder runs on the window zero-padded to 30 s, exactly as Whisper's decoder expects,
so the words are those of transformers' plain Whisper pipeline (same weights, the same
beam search). Windows holding no speech are skipped. The diarization windows are embedded
as ``diarize``'s ``embedding_pass`` says: ``window`` (default) embeds each 1.5 s window
alone, ``shared`` pools it from the 30 s pass the decoder read (no second encoder run; a
backend trained on single utterances separates voices poorly from it, see the docs). A
model whose Whisper encoder was fine-tuned cannot share its pass with the decoder: its
words then come from a second pass of the pre-trained encoder (a warning says so).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lapsv.audio import SAMPLE_RATE
from lapsv.diarization.embedding import pool_windows, window_embeddings
from lapsv.diarization.pipeline import (
    DiarizeOptions,
    StageClock,
    diarization_windows,
    label_windows,
)
from lapsv.diarization.speech import Progress, find_speech
from lapsv.diarization.vad import SileroVAD
from lapsv.errors import ConfigError
from lapsv.frontends.whisper import WhisperFrontend
from lapsv.model import SpeakerModel
from lapsv.speaker import Speaker
from lapsv.speakers import SpeakerDB
from lapsv.transcription.attribution import attribute
from lapsv.transcription.decoder import DecodedSegment, WhisperDecoder, split_window
from lapsv.transcription.transcript import Transcript, TranscriptSegment, Word

WINDOW_SECONDS = 30.0  # Whisper's input
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)


@dataclasses.dataclass(frozen=True)
class TranscribeOptions:
    """Choices of :meth:`Transcriber.transcribe` (the CLI flags have the same names).

    language: a language code ("en", "fr"), or None (or "auto") to detect it on the first
        window with speech (English-only models: always "en").
    word_timestamps: time each word (cross-attention alignment) and attribute words;
        without, whole segments are attributed.
    diarization: the speaker side (count, clustering, VAD), as in ``lapsv diarize``.
    speakers: False: words only, as plain Whisper (no VAD, no speakers).
    beam_size: beams of the decoder's search (1: greedy, faster).
    """

    language: str | None = None
    word_timestamps: bool = True
    speakers: bool = True
    beam_size: int = 5
    diarization: DiarizeOptions = dataclasses.field(default_factory=DiarizeOptions)

    def __post_init__(self) -> None:
        if self.language is not None:  # a code in lower case; "" or "auto": detected
            code = self.language.lower()
            object.__setattr__(self, "language", None if code in ("", "auto") else code)
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be at least 1, got {self.beam_size}")


class Transcriber:
    """A Whisper-frontend lapsv model and its source's decoder: transcripts with speakers.

    Args:
        model: a lapsv model directory's :class:`~lapsv.speaker.Speaker` whose frontend is
            Whisper (``whisper-base``, ``whisper-tiny.en``, a faster-whisper or
            transformers folder).
        decoder: the decoder to use (default: loaded from the frontend's source).

    Raises:
        ConfigError: the model has no Whisper frontend.
    """

    def __init__(self, model: Speaker, *, decoder: WhisperDecoder | None = None) -> None:
        encoder = model.encoder
        frontend = getattr(encoder, "frontend", None)
        if not isinstance(encoder, SpeakerModel) or not isinstance(frontend, WhisperFrontend):
            kind = type(frontend).__name__ if frontend is not None else type(encoder).__name__
            raise ConfigError(
                f"transcribe needs a lapsv model directory on a Whisper frontend (trained "
                f"with frontend whisper-base, whisper-tiny.en or another Whisper); this model "
                f"is {kind}: use `lapsv diarize` for speakers alone"
            )
        if frontend.source is None:
            raise ConfigError(
                "the model's Whisper frontend records no source, so its decoder cannot be "
                "found; retrain or re-save it with frontend.source set"
            )
        self.model, self.speaker_model = model, encoder
        self.decoder = decoder or WhisperDecoder.from_source(frontend.source)
        self.word_frontend: WhisperFrontend | None = None
        if self.decoder.same_encoder(frontend.encoder):
            self.decoder.use_encoder(frontend.encoder)  # one copy of the weights
        else:
            warnings.warn(
                "the model's Whisper encoder was fine-tuned, so its hidden states are not "
                f"the decoder's: words come from a second pass of {frontend.source}'s encoder",
                stacklevel=2,
            )
            self.word_frontend = WhisperFrontend(self.decoder.encoder, source=frontend.source)
            self.word_frontend.eval()

    @property
    def shares_encoder(self) -> bool:
        """Whether the decoder reads the speaker model's own encoder pass."""
        return self.word_frontend is None

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        *,
        sample_rate: int | None = None,
        file_id: str | None = None,
        options: TranscribeOptions | None = None,
        speakers: SpeakerDB | None = None,
        name_threshold: float | None = None,
        vad: SileroVAD | None = None,
        progress: Progress | None = None,
    ) -> Transcript:
        """Who said what in one recording (a file of any length, or samples).

        Arguments as :func:`lapsv.diarization.diarize`'s.

        Raises:
            AudioError: the file cannot be read, or holds no speech.
            ConfigError: impossible options (more speakers asked for than windows).
        """
        options = options or TranscribeOptions()
        if options.language is not None:
            self.decoder.check_language(options.language)
        file_id = file_id or (Path(audio).stem if isinstance(audio, str | Path) else "audio")
        clock = StageClock()
        diarization = options.diarization
        everything = None if options.speakers else np.array([[0.0, np.inf]])  # no VAD
        reader, regions, n_samples = find_speech(
            audio,
            sample_rate=sample_rate,
            vad=vad,
            speech=everything,
            options=diarization.vad,
            progress=progress,
        )
        clock.done("vad")
        duration = n_samples / SAMPLE_RATE
        scaled = diarization_windows(regions, diarization, duration)
        spans = np.round(scaled.spans * SAMPLE_RATE).astype(np.int64)
        if not options.speakers:
            spans = spans[:0]
        run = _WindowRun(self, spans, options, progress)
        language = run.read(reader(), regions, n_samples)
        clock.done("transcription")
        if not options.speakers:
            segments = tuple(run.segments)
            return Transcript(file_id, duration, language, segments, {}, clock.seconds)
        missing = np.flatnonzero(~run.embedded)  # window pass: all; shared: edge windows
        if len(missing):
            run.embeddings[missing] = window_embeddings(
                self.model, reader(), spans[missing], batch_size=diarization.batch_size
            )
        speaker_segments, names = label_windows(
            self.model,
            run.embeddings[scaled.rows[0]],
            scaled.windows,
            diarization,
            longer=scaled.longer(run.embeddings),
            speech=regions,
            speakers=speakers,
            name_threshold=name_threshold,
        )
        segments = attribute(run.segments, speaker_segments)
        clock.done("speakers")
        return Transcript(file_id, duration, language, tuple(segments), names, clock.seconds)


class _WindowRun:
    """The seek loop of one recording: its transcript segments and window embeddings."""

    def __init__(
        self,
        transcriber: Transcriber,
        spans: np.ndarray,
        options: TranscribeOptions,
        progress: Progress | None,
    ) -> None:
        self.transcriber, self.spans = transcriber, spans
        self.options, self.progress = options, progress
        self.embeddings = np.zeros((len(spans), transcriber.model.embed_dim), np.float32)
        self.embedded = np.zeros(len(spans), bool)
        self.segments: list[TranscriptSegment] = []

    def read(self, blocks: Iterator[np.ndarray], regions: np.ndarray, n_samples: int) -> str:
        """Run every window, as Whisper seeks; the language decoded in."""
        audio = _ForwardReader(blocks)
        speech = np.round(regions * SAMPLE_RATE).astype(np.int64)
        language = self.options.language
        seek = 0
        while seek < n_samples:
            following = int(np.searchsorted(speech[:, 1], seek, side="right"))
            if following == len(speech):
                break  # no speech left
            if speech[following, 0] >= seek + WINDOW_SAMPLES:  # no speech in this window
                seek = int(speech[following, 0])
            samples = audio.read(seek, min(seek + WINDOW_SAMPLES, n_samples))
            hidden, word_states = self._encode(samples)
            if self.options.diarization.embedding_pass == "shared":
                self._pool(hidden, seek, len(samples))
            if language is None:
                language = self.transcriber.decoder.detect_language(word_states)
            seek += self._decode(word_states, language, seek, len(samples))
            if self.progress is not None:
                self.progress("transcription", min(seek, n_samples) / SAMPLE_RATE)
        return language or "en"

    def _encode(self, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, 1500, D) hidden states of the window zero-padded to 30 s, and the
        decoder's (1, 1500, D) encoder output (the last state, when the encoder is shared)."""
        model = self.transcriber.speaker_model
        padded = torch.zeros(1, WINDOW_SAMPLES, device=model.device)
        padded[0, : len(samples)] = torch.from_numpy(samples)
        length = torch.tensor([WINDOW_SAMPLES], device=model.device)
        with model.evaluating():
            hidden, _ = model.frontend(padded, length)
            words = self.transcriber.word_frontend
            word_states = hidden[:, -1] if words is None else words(padded, length)[0][:, -1]
        return hidden, word_states

    def _pool(self, hidden: torch.Tensor, seek: int, count: int) -> None:
        """Embed the windows that lie in samples [seek, seek + count) and are not yet."""
        first, last = np.searchsorted(self.spans[:, 0], [seek, seek + count], side="left")
        rows = np.arange(first, last)
        rows = rows[(self.spans[rows, 1] <= seek + count) & ~self.embedded[rows]]
        if len(rows):
            model = self.transcriber.speaker_model
            frames = int(model.frontend.frame_lengths(torch.tensor(count)))
            self.embeddings[rows] = pool_windows(
                model,
                hidden,
                frames,
                self.spans[rows] - seek,
                batch_size=self.options.diarization.batch_size,
            )
            self.embedded[rows] = True

    def _decode(self, states: torch.Tensor, language: str, seek: int, count: int) -> int:
        """Decode one window into segments; the samples to seek by (> 0)."""
        decoder = self.transcriber.decoder
        frames = int(self.transcriber.speaker_model.frontend.frame_lengths(torch.tensor(count)))
        tokens, times = decoder.generate(
            states,
            language,
            word_timestamps=self.options.word_timestamps,
            frames=frames,
            beam_size=self.options.beam_size,
        )
        decoded, advance = split_window(tokens, times, decoder.timestamp_begin, count / SAMPLE_RATE)
        offset, limit = seek / SAMPLE_RATE, (seek + count) / SAMPLE_RATE
        for segment in decoded:
            self.segments.append(_transcript_segment(decoder, segment, offset, limit))
        return max(1, min(count, round(advance * SAMPLE_RATE)))


def _transcript_segment(
    decoder: WhisperDecoder, segment: DecodedSegment, offset: float, limit: float
) -> TranscriptSegment:
    """A decoded segment at its place in the recording (times clamped to its window)."""
    start = min(offset + segment.start, limit)
    end = min(max(offset + segment.end, start), limit)
    words: tuple[Word, ...] = ()
    if segment.token_times is not None:
        words = _words(decoder, segment, offset, start, end)
    return TranscriptSegment(start, end, decoder.text(segment.tokens), None, words)


def _words(
    decoder: WhisperDecoder, segment: DecodedSegment, offset: float, start: float, end: float
) -> tuple[Word, ...]:
    """The words of a segment: a piece starting with a space starts a word; a word ends
    where the next one starts (the last where the segment ends)."""
    assert segment.token_times is not None
    texts: list[str] = []
    starts: list[float] = []
    position = 0
    for text, count in decoder.pieces(segment.tokens):
        time = min(max(offset + segment.token_times[position], start), end)
        if not texts or text.startswith(" "):
            texts.append(text)
            starts.append(time)
        else:
            texts[-1] += text
        position += count
    ends = [*starts[1:], end]
    return tuple(Word(a, max(a, b), t) for a, b, t in zip(starts, ends, texts, strict=True))


class _ForwardReader:
    """Samples [start, end) of a stream of blocks, read forward only: what lies before the
    latest start asked for is dropped, so memory holds about one window."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self._blocks = blocks
        self._buffer = np.zeros(0, np.float32)
        self._start = 0  # sample number of the buffer's first sample

    def read(self, start: int, end: int) -> np.ndarray:
        self._drop_before(start)
        while self._start + len(self._buffer) < end:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buffer = np.concatenate([self._buffer, np.asarray(block, np.float32)])
            self._drop_before(start)
        return self._buffer[start - self._start : end - self._start].copy()

    def _drop_before(self, start: int) -> None:
        cut = min(max(start - self._start, 0), len(self._buffer))
        self._buffer, self._start = self._buffer[cut:], self._start + cut


def transcribe(model: Speaker, audio: str | Path | np.ndarray, **options) -> Transcript:
    """Who said what in one recording: ``Transcriber(model).transcribe(audio, **options)``.

    This loads the decoder at every call; keep a :class:`Transcriber` for many recordings.
    """
    return Transcriber(model).transcribe(audio, **options)
