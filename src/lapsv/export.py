"""Export a speaker model to ONNX or TorchScript and check it against PyTorch.

The exported graph maps ``waveforms`` (B, N) float32 zero-padded 16 kHz samples and
``lengths`` (B,) int64 valid samples to ``embeddings`` (B, E) float32: batch and time are
dynamic axes. It is the model's raw embedding, exactly what ``model.embed_batch(waveforms,
lengths)`` gives (scoring, windowing of long files and audio decoding stay in Python).

How it is exported:

* ONNX uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``,
  opset 17). Checked with torch 2.13: it gives correct dynamic batch and time axes in about
  2 s; the torch.export-based exporter (``dynamo=True``) also works but needs the extra
  ``onnxscript`` package and took about 160 s for the same model. Two operators need help:
  the mel spectrogram's ``torch.stft`` (complex output, not exportable) is computed as a
  convolution with the same windowed DFT basis (:class:`DFTMelSpectrogram`, equal to about
  1e-6 of the largest mel value), and LAP's ``aten::addmv`` gets an ONNX symbolic.
* TorchScript is a trace (``torch.jit.trace``; PyTorch marks it deprecated, ONNX is the
  portable choice).
* Whisper's log-mel uses ONNX's STFT operator (:class:`RealSTFTWhisperLogMel`). Its encoder
  takes at most 30 s: longer inputs are windowed by lapsv before they reach the graph
  (the file records ``lapsv.max_input_seconds``), so a direct onnxruntime caller must cut
  them too.
* The built-in ``ge2e`` model's partial-window rule (resemblyzer's, Python lists in
  :meth:`GE2EEncoder.embed_batch`) is rewritten with tensor operations in :class:`GE2EGraph`.

Metadata travels inside the file (ONNX ``metadata_props`` / TorchScript extra file): the
source model's id (so a speaker database enrolled with the PyTorch model accepts the
exported one, and vice versa), embedding size, sample rate, and the scoring state (training
mean, AS-norm cohort, QMF calibration), so ``lapsv verify model.onnx a.wav b.wav`` gives the
same scores and decision as the PyTorch model. :mod:`lapsv.exported` runs the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lapsv import __version__
from lapsv.audio import pad_batch
from lapsv.errors import ConfigError, ModelLoadError
from lapsv.exported import (
    EXTRA_FILE,
    METADATA_FORMAT,
    METADATA_VERSION,
    SUFFIXES,
    ExportedEncoder,
    quiet_export,
)
from lapsv.files import atomic_path
from lapsv.frontends.features import MelSpectrogram
from lapsv.frontends.ge2e import HOP, PARTIAL_FRAMES, SAMPLE_RATE, GE2EEncoder
from lapsv.frontends.whisper import HOP as WHISPER_HOP
from lapsv.frontends.whisper import WhisperLogMel
from lapsv.speaker import Speaker

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
CHECK_SECONDS = (1.0, 3.0, 10.0)
TOLERANCE = 1e-4


class DFTMelSpectrogram(nn.Module):
    """:class:`MelSpectrogram` computed as a strided convolution with the windowed DFT basis.

    ONNX cannot carry ``torch.stft``'s complex output; a real and an imaginary basis row per
    frequency bin give the same power spectrum (``center=True``, zero padding) with plain
    Conv1d, so the graph exports with any exporter and runs on any ONNX runtime.

    >>> mel = MelSpectrogram(16000, n_fft=400, hop=160, n_mels=40)
    >>> x = torch.randn(2, 16000)
    >>> bool((DFTMelSpectrogram(mel)(x) - mel(x)).abs().max() < 1e-4 * mel(x).abs().max())
    True
    """

    def __init__(self, mel: MelSpectrogram) -> None:
        super().__init__()
        self.n_fft, self.hop = mel.n_fft, mel.hop
        self.n_bins = mel.n_fft // 2 + 1
        bins = torch.arange(self.n_bins, dtype=torch.float64)[:, None]
        samples = torch.arange(self.n_fft, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * bins * samples / self.n_fft
        window = mel.window.to(torch.float64)
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)
        self.register_buffer("filters", mel.filters.detach().clone(), persistent=False)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return 1 + sample_lengths // self.hop

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, 1 + N // hop, n_mels) mel power."""
        half = self.n_fft // 2
        padded = F.pad(waveforms.float()[:, None, :], (half, half))
        spectrum = F.conv1d(padded, self.basis, stride=self.hop)  # (B, 2F, T)
        real, imag = spectrum[:, : self.n_bins], spectrum[:, self.n_bins :]
        power = real * real + imag * imag
        return torch.matmul(self.filters, power).transpose(1, 2)


class GE2EGraph(nn.Module):
    """:meth:`GE2EEncoder.embed_batch` with tensor operations only (traceable, dynamic lengths).

    Every item's mel frames are cut into all 1.6 s windows a padded batch allows (one
    gather); the windows of resemblyzer's rule (:func:`~lapsv.frontends.ge2e.partial_windows`)
    are selected by a mask computed from the lengths, and their embeddings averaged.
    """

    def __init__(
        self, encoder: GE2EEncoder, *, rate: float = 1.3, min_coverage: float = 0.75
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.step = round((SAMPLE_RATE / rate) / HOP)
        self.min_covered = math.ceil(min_coverage * PARTIAL_FRAMES * HOP)  # samples

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        step, size = self.step, PARTIAL_FRAMES
        lengths = lengths.long()
        n_frames = (lengths + HOP) // HOP  # ceil((n + 1) / hop)
        stop = torch.clamp(n_frames - size + step + 1, min=1)
        count = (stop + step - 1) // step
        covered = lengths - (count - 1) * step * HOP
        count = torch.where((covered < self.min_covered) & (count > 1), count - 1, count)
        mels = self.encoder.frontend.mel(F.pad(waveforms, (0, size * HOP)))  # (B, T, M)
        n_windows = (mels.shape[1] - size) // step + 1
        starts = torch.arange(n_windows, device=mels.device) * step
        index = starts[:, None] + torch.arange(size, device=mels.device)[None, :]
        windows = mels[:, index]  # (B, W, size, M)
        flat = windows.reshape(-1, size, mels.shape[2])
        embeddings = self.encoder.embed_windows(flat).reshape(windows.shape[0], n_windows, -1)
        valid = torch.arange(n_windows, device=mels.device)[None, :] < count[:, None]
        sums = (embeddings * valid.unsqueeze(-1).to(embeddings.dtype)).sum(dim=1)
        return F.normalize(sums, dim=-1)


class RealSTFTWhisperLogMel(WhisperLogMel):
    """:class:`WhisperLogMel` with a real-valued STFT, which ONNX's STFT operator exports
    (the same numbers; PyTorch calls ``return_complex=False`` deprecated, hence only here)."""

    def power_spectrum(self, padded: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(
            padded, self.window.shape[0], hop_length=WHISPER_HOP, window=self.window,
            center=False, return_complex=False,
        )  # fmt: skip
        return spectrum.pow(2).sum(dim=-1)


class EmbeddingGraph(nn.Module):
    """(waveforms (B, N), lengths (B,)) -> raw embeddings (B, E): what gets exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, GE2EEncoder):
            self.net: nn.Module = GE2EGraph(model)
        elif hasattr(model, "frontend") and hasattr(model, "backend"):
            self.net = model
        else:
            raise ConfigError(f"cannot export a {type(model).__name__}: not a lapsv model")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(waveforms, lengths)


def _replace_mel(module: nn.Module) -> None:
    """Swap every mel spectrogram inside ``module`` for an exportable twin:
    :class:`DFTMelSpectrogram` for GE2E's, :class:`RealSTFTWhisperLogMel` for Whisper's."""
    for name, child in list(module.named_children()):
        if isinstance(child, MelSpectrogram):
            setattr(module, name, DFTMelSpectrogram(child))
        elif type(child) is WhisperLogMel:
            setattr(module, name, RealSTFTWhisperLogMel(child.n_mels).to(child.filters.device))
        else:
            _replace_mel(child)


def _addmv_symbolic(g, bias, matrix, vector, beta, alpha):
    """ONNX for ``torch.addmv(bias, matrix, vector)`` with beta = alpha = 1 (LAP's use)."""
    from torch.onnx import symbolic_helper

    if symbolic_helper._maybe_get_const(beta, "f") != 1 or (
        symbolic_helper._maybe_get_const(alpha, "f") != 1
    ):
        return symbolic_helper._unimplemented("addmv", "beta or alpha other than 1", bias)
    return g.op("Add", bias, g.op("MatMul", matrix, vector))


def _example_inputs(
    sample_rate: int, max_seconds: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two items of different lengths, so nothing is specialised to one length or batch;
    2 s, or the longest input the model takes at once if that is shorter."""
    generator = torch.Generator().manual_seed(0)
    longest = int(min(2.0, max_seconds or 2.0) * sample_rate)
    waveforms = 0.1 * torch.randn(2, longest, generator=generator)
    lengths = torch.tensor([longest, 2 * longest // 3])
    waveforms[1, lengths[1] :] = 0
    return waveforms, lengths


def model_metadata(model: Speaker, source: str) -> dict[str, str]:
    """What an exported file records about its model (strings only)."""
    metadata = {
        "lapsv.format": METADATA_FORMAT,
        "lapsv.format_version": str(METADATA_VERSION),
        "lapsv.version": __version__,
        "lapsv.source": source,
        "lapsv.model_id": model.model_id,
        "lapsv.embed_dim": str(model.embed_dim),
        "lapsv.sample_rate": str(model.sample_rate),
    }
    if model.max_input_seconds is not None:
        metadata["lapsv.max_input_seconds"] = str(model.max_input_seconds)
    metadata.update(model.scoring.to_metadata())
    return metadata


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """path: the file; max_abs_diff: seconds of input -> max |exported - PyTorch| (checked)."""

    path: Path
    format: str
    max_abs_diff: dict[float, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def export_model(
    model: Speaker | nn.Module,
    out: str | Path,
    *,
    format: str = "onnx",
    source: str = "",
    check_seconds: Sequence[float] = CHECK_SECONDS,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export ``model`` to ``out``, atomically, with its scoring state in the metadata.

    ``model``: what :func:`lapsv.load_model` returns for a model directory or ``ge2e``
    (or a bare :class:`~lapsv.model.SpeakerModel`, exported without scoring state). After
    writing, the file is loaded back and run on random inputs of ``check_seconds``
    (and one padded batch of them); a difference above ``tolerance`` to the PyTorch model
    removes nothing but raises :class:`~lapsv.errors.ModelLoadError` naming the figures.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, not {format!r}")
    model = model if isinstance(model, Speaker) else Speaker(model)
    if not isinstance(model.encoder, nn.Module):
        raise ConfigError(f"{source or model}: already exported; export the PyTorch model")
    out = Path(out)
    suffixes = SUFFIXES[format]
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{out}: a {format} file must end with {' or '.join(suffixes)}")
    graph = EmbeddingGraph(copy.deepcopy(model.encoder).cpu().eval()).eval()
    if format == "onnx":
        _replace_mel(graph)
    metadata = model_metadata(model, source)
    limit = model.max_input_seconds
    example = _example_inputs(model.sample_rate, limit)
    # the graph takes inputs up to the model's limit (lapsv windows longer ones before it)
    check_seconds = [s for s in check_seconds if limit is None or s <= limit] or [limit]
    with atomic_path(out) as tmp, torch.no_grad(), quiet_export():
        if format == "onnx":
            _export_onnx(graph, example, tmp, metadata)
        else:
            traced = torch.jit.trace(graph, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(metadata)})
    diffs = compare_with_export(model, out, seconds=check_seconds)
    result = ExportResult(out, format, diffs)
    if result.worst > tolerance:
        raise ModelLoadError(
            f"{out}: the exported model differs from PyTorch by {result.worst:.2e} (> "
            f"{tolerance:g}); per input: {diffs}"
        )
    return result


def _export_onnx(
    graph: nn.Module,
    example: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
) -> None:
    try:
        import onnx
    except ImportError as error:
        raise ModelLoadError(
            "ONNX export needs the onnx package: pip install 'lapsv[export]'"
        ) from error
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::addmv", _addmv_symbolic, ONNX_OPSET)
    torch.onnx.export(
        graph,
        example,
        str(path),
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=["waveforms", "lengths"],
        output_names=["embeddings"],
        dynamic_axes={
            "waveforms": {0: "batch", 1: "samples"},
            "lengths": {0: "batch"},
            "embeddings": {0: "batch"},
        },
    )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def compare_with_export(
    model: Speaker, path: str | Path, *, seconds: Sequence[float] = CHECK_SECONDS
) -> dict[float, float]:
    """Max |exported - PyTorch| embedding difference for random inputs of ``seconds`` each,
    and (key 0.0) for one zero-padded batch of all of them."""
    exported = ExportedEncoder.load(path)
    rate = model.sample_rate
    generator = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(int(s * rate), generator=generator) for s in seconds]
    diffs: dict[float, float] = {}
    device = model.device
    with torch.no_grad():
        for s, wave in zip(seconds, waves, strict=True):
            lengths = torch.tensor([wave.numel()])
            ours = model.embed_batch(wave[None].to(device), lengths.to(device)).float().cpu()
            theirs = exported.embed_batch(wave[None], lengths)
            diffs[float(s)] = float((ours - theirs).abs().max())
        if len(waves) > 1:
            batch, lengths = pad_batch([w.numpy() for w in waves])
            ours = model.embed_batch(batch.to(device), lengths.to(device)).float().cpu()
            diffs[0.0] = float((ours - exported.embed_batch(batch, lengths)).abs().max())
    return diffs
