"""lapsv: speaker verification with Layer Attentive Pooling over pre-trained speech encoders.

Public API::

    import lapsv
    backend = lapsv.build_backend("lap", "astp", in_dim=1024, n_layers=25)
    model = lapsv.load_model("ge2e")          # built-in offline model, or a model directory
"""

__version__ = "0.1.0"

from lapsv.backend import SpeakerBackend, build_backend
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.frontends import GE2EEncoder, GE2EFrontend, HFFrontend, build_frontend
from lapsv.inference import embed_waveforms
from lapsv.loading import load_model
from lapsv.losses import AAMSoftmax, margin_at_step
from lapsv.model import SpeakerModel

__all__ = [
    "AAMSoftmax",
    "BackendConfig",
    "FrontendConfig",
    "GE2EEncoder",
    "GE2EFrontend",
    "HFFrontend",
    "ModelConfig",
    "SpeakerBackend",
    "SpeakerModel",
    "__version__",
    "build_backend",
    "build_frontend",
    "embed_waveforms",
    "load_model",
    "margin_at_step",
]
