"""OpenAI Whisper's encoder (transformers' ``WhisperEncoder``) as a frontend.

Hidden states, (B, L, T, D) with L = encoder_layers + 1 at 50 frames per second:

* state 0 is the embedding output: two GELU convolutions over the log-mel spectrogram
  (the second with stride 2) plus the sinusoidal position table;
* state l (1 <= l < L-1) is the residual stream after Transformer layer l;
* state L-1 is the last layer's output **after** the encoder's final layer norm, as in
  transformers' ``output_hidden_states``.

Whisper was trained on 30 s windows; here any length up to 30 s runs without padding to
30 s (the position table is sliced), and padded frames are masked out of the attention,
so an utterance gives the same hidden states alone or in a padded batch. lapsv's
embedding functions cut longer recordings into windows of at most 30 s
(:attr:`WhisperFrontend.max_input_seconds`); a direct call with a longer input runs the
encoder on consecutive 30 s chunks and joins their frames.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lapsv.config import FrontendConfig
from lapsv.errors import ModelLoadError
from lapsv.frontends.base import Frontend, FrontendOutput
from lapsv.frontends.features import mel_filterbank
from lapsv.frontends.hf import import_transformers, quiet_transformers
from lapsv.frontends.whisper_sources import resolve_whisper_source

if TYPE_CHECKING:
    import transformers

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: 100 mel frames per second, 50 encoder frames
CONV_STRIDE = 2


class WhisperLogMel(torch.nn.Module):
    """Whisper's log-mel spectrogram, batched and padding-invariant.

    Equal (to 1e-4) to transformers' ``WhisperFeatureExtractor`` on an unpadded waveform:
    Hann-window STFT with reflection at both ends of each utterance (not of the padded
    batch), power, Slaney mel filters up to 8 kHz, log10, floor at the utterance's maximum
    minus 8, then ``(x + 4) / 4``. An utterance of N samples gives N // 160 frames; frames
    past an utterance's end are zero.

    Example:
        >>> mel = WhisperLogMel(n_mels=80)
        >>> features, frames = mel(torch.randn(2, 16000), torch.tensor([16000, 8000]))
        >>> tuple(features.shape), frames.tolist()
        ((2, 80, 100), [100, 50])
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        filters = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels, fmax=SAMPLE_RATE / 2)
        self.register_buffer("filters", torch.from_numpy(filters), persistent=False)

    @staticmethod
    def frame_lengths(sample_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) mel frames."""
        return sample_lengths // HOP

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) zero-padded waveforms, (B,) lengths -> (B, n_mels, N // 160), (B,) frames."""
        frames = self.frame_lengths(lengths)
        padded = _reflect_each(waveforms.float(), lengths, N_FFT // 2)
        power = self.power_spectrum(padded)[..., :-1]  # (B, F, M): the last frame is dropped
        log_mel = torch.matmul(self.filters, power).clamp(min=1e-10).log10()
        valid = torch.arange(log_mel.shape[-1], device=log_mel.device) < frames[:, None]
        peak = log_mel.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2))
        log_mel = torch.maximum(log_mel, (peak - 8.0)[:, None, None])
        return ((log_mel + 4.0) / 4.0) * valid[:, None, :], frames

    def power_spectrum(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_fft // 2 + 1, 1 + (N - n_fft) // hop) STFT power, no centring."""
        spectrum = torch.stft(
            padded, N_FFT, hop_length=HOP, window=self.window, center=False, return_complex=True
        )
        return spectrum.real.pow(2) + spectrum.imag.pow(2)


def _reflect_each(waveforms: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, N) -> (B, N + 2 pad): each row reflected about its own ends, as numpy's 'reflect'."""
    positions = torch.arange(-pad, waveforms.shape[1] + pad, device=waveforms.device)
    last = (lengths - 1).clamp(min=0)[:, None]
    index = positions.abs()[None, :]  # (1, N + 2 pad), broadcast against (B, 1) below
    index = torch.where(index > last, 2 * last - index, index)
    index = torch.minimum(index.clamp(min=0), last)
    return torch.gather(waveforms, 1, index)


class WhisperFrontend(Frontend):
    """Whisper's encoder exposing all hidden states (module docstring): (B, N) 16 kHz
    waveforms -> (B, encoder_layers + 1, T, d_model), T = ceil((N // 160) / 2).

    Args:
        encoder: a transformers ``WhisperEncoder`` (pre-trained or random).
        source: where its weights came from (recorded in the saved config).
        freeze: frozen encoder in eval mode (stage 1).
        freeze_feature_encoder: when fine-tuning, keep the two input convolutions frozen.
        gradient_checkpointing: recompute each layer's activations in backward.

    Example:
        >>> frontend = WhisperFrontend.from_config(dict(d_model=32, encoder_layers=2,
        ...     encoder_attention_heads=2, encoder_ffn_dim=64, max_source_positions=1500))
        >>> out = frontend(torch.randn(2, 16000), torch.tensor([16000, 8000]))
        >>> tuple(out.hidden_states.shape), out.lengths.tolist()
        ((2, 3, 50, 32), [50, 25])
    """

    def __init__(
        self,
        encoder: transformers.WhisperEncoder,
        *,
        source: str | None = None,
        freeze: bool = True,
        freeze_feature_encoder: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.source = source
        config = encoder.config
        self.n_layers = config.encoder_layers + 1
        self.hidden_size = config.d_model
        self.mel = WhisperLogMel(config.num_mel_bins)
        self.max_mel_frames = config.max_source_positions * CONV_STRIDE
        self.max_input_seconds = self.max_mel_frames * HOP / SAMPLE_RATE
        self.freeze_feature_encoder = freeze_feature_encoder
        self.gradient_checkpointing = gradient_checkpointing
        self.set_frozen(freeze)

    @classmethod
    def from_config(cls, hf_config: dict[str, Any], **options: Any) -> WhisperFrontend:
        """Randomly initialised encoder of the architecture of a ``WhisperConfig`` dict."""
        library = import_transformers()
        config = library.WhisperConfig.from_dict(dict(hf_config))
        return cls(library.models.whisper.modeling_whisper.WhisperEncoder(config), **options)

    @classmethod
    def from_pretrained(
        cls, source: str, *, trust_pickle: bool = False, **options: Any
    ) -> WhisperFrontend:
        """Pre-trained encoder from a built-in name, a hub id or a local folder.

        ``source`` is resolved by :func:`~lapsv.frontends.whisper_sources.resolve_whisper_source`
        (``whisper-base``, ``whisper-tiny.en``, CTranslate2 / faster-whisper folders,
        transformers folders, hub ids such as ``openai/whisper-small``). Weights are read
        from safetensors only, unless ``trust_pickle``.
        """
        resolved = resolve_whisper_source(source)
        library = import_transformers()
        try:
            with quiet_transformers():  # no progress bar
                model = library.WhisperModel.from_pretrained(
                    resolved, use_safetensors=None if trust_pickle else True
                )
        except (OSError, ValueError) as error:
            hint = (
                "; it has no safetensors weights and pickle weights are refused unless you "
                "trust the source (--trust-pickle)"
                if "safetensors" in str(error)
                else "; without network access, pass a local folder or a built-in name "
                "(whisper-base, whisper-tiny.en)"
            )
            raise ModelLoadError(
                f"cannot load the Whisper model '{source}' ({error}){hint}"
            ) from error
        return cls(model.get_encoder().float(), source=source, **options)

    def set_frozen(self, frozen: bool) -> None:
        super().set_frozen(frozen)
        self.encoder.embed_positions.requires_grad_(False)  # a fixed sinusoid table
        if not frozen and self.freeze_feature_encoder:
            for conv in (self.encoder.conv1, self.encoder.conv2):
                conv.requires_grad_(False)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        mel_frames = self.mel.frame_lengths(sample_lengths)
        return (mel_frames + CONV_STRIDE - 1) // CONV_STRIDE

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> FrontendOutput:
        mel, mel_frames = self.mel(waveforms, lengths)
        chunks = [
            self._encode(mel[:, :, start : start + self.max_mel_frames], mel_frames - start)
            for start in range(0, max(mel.shape[-1], 1), self.max_mel_frames)
        ]
        hidden = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
        return FrontendOutput(hidden, self.frame_lengths(lengths))

    def _encode(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, M <= 3000) log-mel, (B,) valid frames -> (B, L, ceil(M / 2), D)."""
        encoder = self.encoder
        mel_frames = mel_frames.clamp(0, mel.shape[-1])
        frames = (mel_frames + CONV_STRIDE - 1) // CONV_STRIDE
        mel_valid = torch.arange(mel.shape[-1], device=mel.device) < mel_frames[:, None]
        x = F.gelu(encoder.conv1(mel)) * mel_valid[:, None, :]
        x = F.gelu(encoder.conv2(x)).transpose(1, 2)  # (B, T, D)
        valid = torch.arange(x.shape[1], device=x.device) < frames[:, None]
        x = x + encoder.embed_positions.weight[: x.shape[1]]
        # additive key mask, (B, 1, 1, T): padded frames never reach a valid one
        mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        states = [x]
        for layer in encoder.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(_run_layer, layer, x, mask, use_reentrant=False)
            else:
                x = _run_layer(layer, x, mask)
            states.append(x)
        states[-1] = encoder.layer_norm(x)
        return torch.stack(states, dim=1) * valid[:, None, :, None]

    def config(self) -> FrontendConfig:
        return FrontendConfig(
            name="whisper",
            source=self.source,
            freeze=self.frozen,
            freeze_feature_encoder=self.freeze_feature_encoder,
            gradient_checkpointing=self.gradient_checkpointing,
            hf_config=self.encoder.config.to_dict(),
        )


def _run_layer(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One ``WhisperEncoderLayer``; transformers 4.x wants a head mask and returns a tuple."""
    if "layer_head_mask" in inspect.signature(layer.forward).parameters:
        output = layer(x, mask, layer_head_mask=None)
    else:
        output = layer(x, mask)
    return output[0] if isinstance(output, tuple) else output


def whisper_frontend_from_config(
    config: FrontendConfig, *, pretrained: bool, trust_pickle: bool = False
) -> WhisperFrontend:
    """Build from a FrontendConfig: the recorded architecture, or the pre-trained source."""
    options = {
        "freeze": config.freeze,
        "freeze_feature_encoder": config.freeze_feature_encoder,
        "gradient_checkpointing": config.gradient_checkpointing,
    }
    if config.hf_config is not None and (not pretrained or config.source is None):
        return WhisperFrontend.from_config(config.hf_config, source=config.source, **options)
    if config.source is None:
        raise ModelLoadError(
            "frontend 'whisper' needs a source: whisper-base, whisper-tiny.en, a hub id "
            "(openai/whisper-small) or a local transformers / faster-whisper folder"
        )
    return WhisperFrontend.from_pretrained(config.source, trust_pickle=trust_pickle, **options)
