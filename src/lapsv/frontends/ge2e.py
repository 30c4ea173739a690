"""Offline default frontend: the GE2E speaker encoder whose weights ship in resemblyzer.

GE2E (Wan et al., 2018) as trained by resemblyzer: 40-band mel power spectrogram (25 ms
windows, 10 ms hop) into a 3-layer LSTM of 256 units. lapsv exposes the three LSTM layer
outputs as L=3 hidden layers of D=256, so LAP can weigh them like Transformer layers, and
reproduces resemblyzer's own utterance embedding in :class:`GE2EEncoder`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lapsv.config import FrontendConfig
from lapsv.errors import ModelLoadError
from lapsv.frontends.base import Frontend, FrontendOutput
from lapsv.frontends.features import MelSpectrogram
from lapsv.modeldir import state_fingerprint

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms
N_FFT = 400  # 25 ms
N_MELS = 40
HIDDEN_SIZE = 256
N_LSTM_LAYERS = 3
PARTIAL_FRAMES = 160  # GE2E's 1.6 s training windows
INSTALL_HINT = "install its weights with: pip install --no-deps resemblyzer==0.1.4"


def resemblyzer_weights_path() -> Path:
    """Path of ``pretrained.pt`` inside the installed resemblyzer wheel.

    The package is located without importing it: lapsv needs only the weight file, not
    resemblyzer's own dependencies (librosa, webrtcvad).
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"GE2E weights not found: resemblyzer is not installed; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise ModelLoadError(f"GE2E weights not found at {path}; {INSTALL_HINT}")
    return path


def load_resemblyzer_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """resemblyzer's checkpoint as a state dict, loaded without unpickling code."""
    path = resemblyzer_weights_path() if path is None else Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelLoadError(f"{path}: cannot read GE2E weights ({error})") from error
    return checkpoint["model_state"]


class GE2EFrontend(Frontend):
    """GE2E LSTM layers as a frontend: (B, N) waveforms -> (B, 3, T, 256), T = 1 + N // 160.

    The LSTM is causal, and zero padding does not change the mel frames of a shorter item,
    so the valid frames of an utterance are the same alone or in a padded batch.

    Example:
        >>> frontend = GE2EFrontend()  # random weights; GE2EFrontend.from_pretrained() loads GE2E's
        >>> out = frontend(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
        >>> tuple(out.hidden_states.shape), out.lengths.tolist()
        ((2, 3, 101, 256), [101, 51])
    """

    n_layers = N_LSTM_LAYERS
    hidden_size = HIDDEN_SIZE

    def __init__(self, *, freeze: bool = True) -> None:
        super().__init__()
        self.mel = MelSpectrogram(SAMPLE_RATE, n_fft=N_FFT, hop=HOP, n_mels=N_MELS)
        sizes = [N_MELS] + [HIDDEN_SIZE] * (N_LSTM_LAYERS - 1)
        self.lstm = nn.ModuleList(
            nn.LSTM(size, HIDDEN_SIZE, num_layers=1, batch_first=True) for size in sizes
        )
        self.set_frozen(freeze)

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, *, freeze: bool = True
    ) -> GE2EFrontend:
        """GE2E with resemblyzer's pre-trained weights (from its wheel unless ``path``)."""
        frontend = cls(freeze=freeze)
        frontend.load_state_dict(lstm_state_from_resemblyzer(load_resemblyzer_state(path)))
        return frontend

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return self.mel.frame_lengths(sample_lengths)

    def run_layers(self, mels: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, 40) mel -> the 3 LSTM layer outputs, each (B, T, 256)."""
        outputs, x = [], mels
        for lstm in self.lstm:
            x, _ = lstm(x)
            outputs.append(x)
        return outputs

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> FrontendOutput:
        layers = self.run_layers(self.mel(waveforms))
        return FrontendOutput(torch.stack(layers, dim=1), self.frame_lengths(lengths))

    def config(self) -> FrontendConfig:
        return FrontendConfig(name="ge2e", freeze=self.frozen)


def lstm_state_from_resemblyzer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map resemblyzer's 3-layer ``lstm.*_l{k}`` tensors onto three 1-layer LSTMs."""
    mapped = {}
    for layer in range(N_LSTM_LAYERS):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            mapped[f"lstm.{layer}.{kind}_l0"] = state[f"lstm.{kind}_l{layer}"]
    return mapped


def partial_windows(n_samples: int, *, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
    """Start frames of GE2E's 1.6 s partial windows for one utterance (resemblyzer's rule).

    Windows advance by ``1 / rate`` seconds and cover the utterance; a last window with
    less than ``min_coverage`` of real audio is dropped unless it is the only one.

    >>> partial_windows(16000 * 3)
    [0, 77, 154]
    """
    n_frames = -(-(n_samples + 1) // HOP)
    step = round((SAMPLE_RATE / rate) / HOP)
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"rate {rate} gives a window step of {step} frames")
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


class GE2EEncoder(nn.Module):
    """GE2E's own speaker embedding (256-d), as ``resemblyzer.VoiceEncoder.embed_utterance``.

    Each utterance is cut into 1.6 s windows (see :func:`partial_windows`); the last LSTM
    layer's final state of each window goes through Linear + ReLU and is L2-normalised; the
    utterance embedding is the normalised mean over windows. All windows of a batch run in
    one LSTM call. resemblyzer's volume normalisation and VAD trimming are not applied.

    Example:
        >>> encoder = GE2EEncoder()  # random weights; GE2EEncoder.from_pretrained() loads GE2E's
        >>> encoder.embed_batch(torch.randn(2, 32000), torch.tensor([32000, 20000])).shape
        torch.Size([2, 256])
    """

    embed_dim = HIDDEN_SIZE
    sample_rate = SAMPLE_RATE
    max_input_seconds = None  # any length: windows of 1.6 s inside

    def __init__(self, frontend: GE2EFrontend | None = None) -> None:
        super().__init__()
        self.frontend = frontend if frontend is not None else GE2EFrontend()
        self.projection = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> GE2EEncoder:
        """GE2E encoder and projection with resemblyzer's pre-trained weights."""
        state = load_resemblyzer_state(path)
        encoder = cls(GE2EFrontend())
        encoder.frontend.load_state_dict(lstm_state_from_resemblyzer(state))
        encoder.projection.load_state_dict(
            {"weight": state["linear.weight"], "bias": state["linear.bias"]}
        )
        return encoder.eval()

    def embed_windows(self, mels: torch.Tensor) -> torch.Tensor:
        """(P, 160, 40) mel windows -> (P, 256) unit-norm window embeddings."""
        final_states = self.frontend.run_layers(mels)[-1][:, -1]
        return F.normalize(torch.relu(self.projection(final_states)), dim=-1)

    @property
    def model_id(self) -> str:
        """``ge2e-`` + the weights' content hash (:func:`~lapsv.modeldir.state_fingerprint`)."""
        return "ge2e-" + state_fingerprint(self)

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    @torch.no_grad()
    def embed_batch(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        *,
        rate: float = 1.3,
        min_coverage: float = 0.75,
    ) -> torch.Tensor:
        """(B, N) zero-padded 16 kHz waveforms, (B,) valid samples -> (B, 256) unit norm."""
        starts = [partial_windows(int(n), rate=rate, min_coverage=min_coverage) for n in lengths]
        needed = max((s[-1] + PARTIAL_FRAMES) * HOP for s in starts)
        if needed > waveforms.shape[1]:
            waveforms = F.pad(waveforms, (0, needed - waveforms.shape[1]))
        mels = self.frontend.mel(waveforms)  # (B, T, 40)
        windows = torch.stack(
            [
                mels[item, start : start + PARTIAL_FRAMES]
                for item, s in enumerate(starts)
                for start in s
            ]
        )
        owners = torch.tensor(
            [item for item, s in enumerate(starts) for _ in s], device=mels.device
        )
        window_embeddings = self.embed_windows(windows)
        sums = window_embeddings.new_zeros(len(starts), self.embed_dim)
        sums.index_add_(0, owners, window_embeddings)
        return F.normalize(sums, dim=-1)
