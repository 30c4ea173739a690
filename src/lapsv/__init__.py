"""lapsv: speaker verification with Layer Attentive Pooling over pre-trained speech encoders.

Public API::

    import lapsv
    model = lapsv.load_model("ge2e")          # built-in offline model, a model directory,
                                              # a hub id, or an exported .onnx / .pt file
    e1 = model.embed("alice.wav")             # (E,) numpy; also arrays at any sample rate
    e2 = model.embed(samples, sample_rate=8000)
    model.similarity(e1, e2)                  # cosine (training mean subtracted if known)
    model.verify("alice.wav", "bob.wav")      # scores, LLR when calibrated, decision
    model.embed_batch(waveforms, lengths)     # (B, N) padded tensor, (B,) lengths -> (B, E)
    backend = lapsv.build_backend("lap", "astp", in_dim=1024, n_layers=25)
    lapsv.diarize(model, "meeting.wav").segments   # who spoke when: Segment(start, end, speaker)
    lapsv.Transcriber(whisper_model).transcribe("call.wav")  # who said what (Whisper models)
"""

__version__ = "0.1.0"

from lapsv.backend import SpeakerBackend, build_backend
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.diarization import Diarization, DiarizeOptions, diarize
from lapsv.export import export_model
from lapsv.frontends import GE2EEncoder, GE2EFrontend, HFFrontend, build_frontend
from lapsv.inference import embed_waveforms
from lapsv.losses import AAMSoftmax, margin_at_step
from lapsv.model import SpeakerModel
from lapsv.scoring.state import ScoringState, Verification
from lapsv.speaker import Speaker, load_model
from lapsv.speakers import SpeakerDB
from lapsv.transcription import Transcriber, Transcript, transcribe

__all__ = [
    "AAMSoftmax",
    "BackendConfig",
    "Diarization",
    "DiarizeOptions",
    "FrontendConfig",
    "GE2EEncoder",
    "GE2EFrontend",
    "HFFrontend",
    "ModelConfig",
    "ScoringState",
    "Speaker",
    "SpeakerBackend",
    "SpeakerDB",
    "SpeakerModel",
    "Transcriber",
    "Transcript",
    "Verification",
    "__version__",
    "build_backend",
    "build_frontend",
    "diarize",
    "embed_waveforms",
    "export_model",
    "load_model",
    "margin_at_step",
    "transcribe",
]
