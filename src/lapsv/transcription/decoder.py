"""Whisper's decoder over precomputed encoder states: words with timestamps.

:class:`WhisperDecoder` runs transformers' generation on Whisper's decoder with
``encoder_outputs`` given, so the encoder pass that lapsv's frontend already made (every
hidden state, for LAP) also feeds the decoder: the last hidden state *is* the encoder
output. Decoding is a beam search of 5 with timestamp tokens on (no temperature fallback,
no conditioning on the previous window), as transformers' speech-recognition pipeline
decodes by default (and faster-whisper, and openai-whisper's command line).

:func:`split_window` turns one window's tokens into Whisper segments and says how far to
seek, as openai-whisper's ``transcribe`` does: segments lie between pairs of consecutive
timestamp tokens; a window ending in a single timestamp was read to its end, otherwise
the next window starts at the last complete segment's end.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from lapsv.errors import ConfigError, ModelLoadError
from lapsv.frontends.hf import import_transformers, quiet_transformers
from lapsv.frontends.whisper_sources import resolve_whisper_source

SECONDS_PER_TIMESTAMP = 0.02  # one timestamp token step: 20 ms, an encoder frame


@dataclasses.dataclass(frozen=True)
class DecodedSegment:
    """One segment of a window: [start, end) seconds from the window's start, its text
    tokens, and each token's start time (seconds from the window's start; None without
    word timestamps)."""

    start: float
    end: float
    tokens: tuple[int, ...]
    token_times: tuple[float, ...] | None


def split_window(
    tokens: list[int],
    times: list[float] | None,
    timestamp_begin: int,
    window_seconds: float,
) -> tuple[list[DecodedSegment], float]:
    """(segments, seconds to seek) of one window's generated ``tokens`` (prompt excluded).

    ``times`` holds each token's time (word timestamps) or is None; ``window_seconds`` is
    the audio in the window (at most 30 s). The seek is always > 0.

    >>> split_window([50364, 11, 12, 50464, 50464, 13, 50514], None, 50364, 30.0)[1]
    30.0
    >>> segments, seek = split_window([50364, 11, 50414, 50414, 12], None, 50364, 30.0)
    >>> [(s.start, s.end, s.tokens) for s in segments], seek
    ([(0.0, 1.0, (11,))], 1.0)
    """
    stamp = [t >= timestamp_begin for t in tokens]
    seconds = [(t - timestamp_begin) * SECONDS_PER_TIMESTAMP for t in tokens]
    ends_single = len(tokens) >= 2 and stamp[-2:] == [False, True]
    consecutive = [i for i in range(1, len(tokens)) if stamp[i - 1] and stamp[i]]
    segments: list[DecodedSegment] = []

    def add(first: int, last: int, start: float, end: float) -> None:
        text = [i for i in range(first, last) if not stamp[i]]
        if text:
            token_times = None if times is None else tuple(times[i] for i in text)
            segments.append(
                DecodedSegment(start, max(end, start), tuple(tokens[i] for i in text), token_times)
            )

    if consecutive:
        slices = consecutive + ([len(tokens)] if ends_single else [])
        previous = 0
        for current in slices:
            add(previous, current, seconds[previous], seconds[current - 1])
            previous = current
        seek = window_seconds if ends_single else seconds[previous - 1]
    else:
        stamps = [s for s, is_stamp in zip(seconds, stamp, strict=True) if is_stamp]
        end = stamps[-1] if stamps and stamps[-1] > 0 else window_seconds
        add(0, len(tokens), stamps[0] if len(stamps) > 1 else 0.0, min(end, window_seconds))
        seek = window_seconds
    return segments, seek if seek > 0 else window_seconds


class WhisperDecoder:
    """The decoder, tokenizer and decoding settings of one Whisper source.

    Args:
        model: transformers' ``WhisperForConditionalGeneration`` (eval mode).
        tokenizer: its ``WhisperTokenizerFast``.
        source: where it came from (for messages).
    """

    def __init__(self, model, tokenizer, source: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        settings = model.generation_config
        if getattr(settings, "no_timestamps_token_id", None) is None:
            raise ModelLoadError(
                f"the Whisper source '{source}' has no decoding settings "
                "(generation_config.json with no_timestamps_token_id): use a built-in name "
                "(whisper-base, whisper-tiny.en), a faster-whisper folder with its "
                "tokenizer.json, or a complete transformers folder"
            )
        self.timestamp_begin = int(settings.no_timestamps_token_id) + 1
        self.multilingual = bool(getattr(settings, "is_multilingual", False))
        self.word_timestamps = bool(getattr(settings, "alignment_heads", None))

    @classmethod
    def from_source(cls, source: str, *, trust_pickle: bool = False) -> WhisperDecoder:
        """Load from a built-in name, a faster-whisper or transformers folder, or a hub id."""
        library = import_transformers()
        resolved = resolve_whisper_source(source)
        try:
            with quiet_transformers():
                model = library.WhisperForConditionalGeneration.from_pretrained(
                    resolved, use_safetensors=None if trust_pickle else True
                )
                tokenizer = library.WhisperTokenizerFast.from_pretrained(resolved)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot load the Whisper decoder of '{source}' ({error})"
            ) from error
        return cls(model.float().eval(), tokenizer, source)

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.get_encoder()

    def same_encoder(self, encoder: torch.nn.Module) -> bool:
        """Whether ``encoder`` has exactly this model's encoder weights (not fine-tuned)."""
        own = self.encoder.state_dict()
        other = encoder.state_dict()
        return own.keys() == other.keys() and all(
            torch.equal(own[k], other[k].to(own[k].device)) for k in own
        )

    def use_encoder(self, encoder: torch.nn.Module) -> None:
        """Drop this model's copy of the encoder for ``encoder`` (the same weights)."""
        self.model.model.encoder = encoder

    @torch.no_grad()
    def detect_language(self, states: torch.Tensor) -> str:
        """Language code ("en") of (1, T, D) encoder output; "en" for English-only models."""
        if not self.multilingual:
            return "en"
        outputs = _encoder_outputs(states)
        token = int(self.model.detect_language(encoder_outputs=outputs)[0])
        return self.tokenizer.convert_ids_to_tokens(token).strip("<|>")

    def prompt(self, language: str) -> list[int]:
        """The decoder's first tokens: <|startoftranscript|>, then (multilingual models)
        the language and <|transcribe|>."""
        settings = self.model.generation_config
        tokens = [int(settings.decoder_start_token_id)]
        if self.multilingual:
            code = self.check_language(language)
            tokens += [int(settings.lang_to_id[code]), int(settings.task_to_id["transcribe"])]
        return tokens

    def check_language(self, language: str) -> str:
        """The language token of a code ("en" -> "<|en|>"); ConfigError for a code the
        model does not know (an English-only model knows "en" only)."""
        languages = self.model.generation_config.lang_to_id if self.multilingual else {}
        code = f"<|{language}|>"
        if code in languages or (not self.multilingual and language == "en"):
            return code
        known = ", ".join(sorted(c.strip("<|>") for c in languages)) or "en"
        raise ConfigError(f"unknown language {language!r} for {self.source}: one of {known}")

    @torch.no_grad()
    def generate(
        self,
        states: torch.Tensor,
        language: str,
        *,
        word_timestamps: bool,
        frames: int,
        beam_size: int = 5,
    ) -> tuple[list[int], list[float] | None]:
        """Tokens (timestamps included, prompt and end left out) of one window's
        (1, 1500, D) encoder output, whose first ``frames`` frames hold audio, with each
        token's time (seconds from the window's start) when ``word_timestamps``.

        One pass of beam search (``beam_size`` beams; 1: greedy), with openai-whisper's
        rules as transformers applies them (timestamps in pairs and never going back, at
        most 1 s in at first; the suppressed tokens). transformers' own Whisper
        ``generate`` is not used: it seeks inside the 30 s again by itself, which needs
        the audio, not the encoder output.
        """
        library = import_transformers()
        words = word_timestamps and self.word_timestamps
        prompt = self.prompt(language)
        settings = copy.deepcopy(self.model.generation_config)
        processors = library.LogitsProcessorList(
            [
                library.SuppressTokensAtBeginLogitsProcessor(
                    settings.begin_suppress_tokens, begin_index=len(prompt), device=states.device
                ),
                library.SuppressTokensLogitsProcessor(
                    settings.suppress_tokens, device=states.device
                ),
                library.WhisperTimeStampLogitsProcessor(settings, begin_index=len(prompt)),
            ]
        )
        settings.suppress_tokens = settings.begin_suppress_tokens = None  # done above
        settings.do_sample, settings.num_beams = False, beam_size
        if words:
            self.model.config._attn_implementation = "eager"  # cross-attentions are needed
        with quiet_transformers():  # its advice on arguments, at every call
            output = library.GenerationMixin.generate(
                self.model,
                encoder_outputs=_encoder_outputs(states),
                decoder_input_ids=torch.tensor([prompt], device=states.device),
                generation_config=settings,
                logits_processor=processors,
                return_dict_in_generate=words,
                output_attentions=words,
            )
        sequence = (output.sequences if words else output)[0]
        times = None
        if words:
            times = self.model._extract_token_timestamps(
                output,
                settings.alignment_heads,
                num_frames=torch.tensor([2 * frames]),  # mel frames: 2 per encoder frame
                num_input_ids=len(prompt),
            )[0].tolist()
        end = int(settings.eos_token_id)
        keep = [i for i, t in enumerate(sequence.tolist()) if i >= len(prompt) and t != end]
        tokens = sequence.tolist()
        return [tokens[i] for i in keep], None if times is None else [times[i] for i in keep]

    def text(self, tokens: tuple[int, ...] | list[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def pieces(self, tokens: tuple[int, ...]) -> list[tuple[str, int]]:
        """(text, number of tokens) of each run of tokens that decodes to whole characters
        (a multi-byte character can span tokens), in order."""
        out: list[tuple[str, int]] = []
        run: list[int] = []
        for token in tokens:
            run.append(token)
            text = self.text(run)
            if "\ufffd" not in text:
                out.append((text, len(run)))
                run = []
        if run:
            out.append((self.text(run), len(run)))
        return out


def _encoder_outputs(states: torch.Tensor):
    library = import_transformers()
    return library.modeling_outputs.BaseModelOutput(last_hidden_state=states)
