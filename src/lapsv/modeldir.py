"""What a saved lapsv model directory holds, a model's content hash, and the refusal of
pickle weights.

A model directory holds ``config.yaml`` (resolved config, lapsv version, format) and
``model.safetensors`` (every weight). Scoring state is optional and attached only by an
explicit step (``lapsv eval ... --save-scoring``): ``scoring.npz`` (training mean, AS-norm
cohort) and ``qmf.json`` (QMF calibration). Every module that reads or writes these files
takes their names from here; this module imports nothing of lapsv but its errors.
A model's id (:func:`state_fingerprint`) is a hash of its config and weights, never of file
names or times.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch
from torch import nn

from lapsv.errors import ModelLoadError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
SCORING_FILE = "scoring.npz"  # optional: training mean and AS-norm cohort
QMF_FILE = "qmf.json"  # optional: QMF calibration
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, SCORING_FILE, QMF_FILE)  # what a hub id may fetch

# Weight files that are pickles (torch.save): loading one can run any code it carries.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
PICKLE_WEIGHT_FILES = ("model.pt", "model.pth", "model.bin", "pytorch_model.bin", "model.ckpt")


def state_fingerprint(module: nn.Module, header: str = "") -> str:
    """16 hex digits of SHA-256 over ``header`` and every tensor (name, dtype, shape, bytes).

    This content hash is what ``model_id`` means everywhere in lapsv (``lapsv-`` + it for
    a SpeakerModel, with its config as ``header``; ``ge2e-`` + it for the built-in GE2E).
    It is cached on the module until a tensor is replaced or changed in place (an
    optimizer step bumps the tensors' version counters), so asking again is cheap.
    """
    state = module.state_dict()
    key = (header, tuple((id(t), t._version) for t in state.values()))
    cached = module.__dict__.get("_lapsv_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256(header.encode())
    for name, tensor in state.items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    module.__dict__["_lapsv_fingerprint"] = (key, digest.hexdigest()[:16])
    return module.__dict__["_lapsv_fingerprint"][1]


def is_pickle_checkpoint(path: str | Path) -> bool:
    """A ``torch.save`` / pickle file by its suffix (a TorchScript archive is not one)."""
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return False
    if zipfile.is_zipfile(path):  # torch.save's zip format; TorchScript also stores code/
        with zipfile.ZipFile(path) as archive:
            return not any("/code/" in f"/{name}" for name in archive.namelist())
    return True


def weight_files(directory: str | Path) -> tuple[Path, Path, Path]:
    """(directory, config path, weights path) of a model directory, or of a pickle weight
    file given directly (its ``config.yaml`` beside it). Without ``model.safetensors`` the
    first pickle weight file present is named (and refused unless trusted, by the loader)."""
    directory = Path(directory)
    if directory.is_file():
        return directory.parent, directory.parent / CONFIG_FILE, directory
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [directory / n for n in PICKLE_WEIGHT_FILES if (directory / n).is_file()]
        weights = pickles[0] if pickles else weights
    return directory, directory / CONFIG_FILE, weights


def read_pickle_state(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a pickle checkpoint; refused (ModelLoadError) unless ``trust_pickle``.

    Accepts a state dict, a dict holding one under ``state_dict`` / ``model_state`` /
    ``model``, or a pickled module.
    """
    if not trust_pickle:
        raise pickle_refused(path)
    try:
        value = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ModelLoadError(f"{path}: cannot read the checkpoint ({error})") from error
    if isinstance(value, nn.Module):
        value = value.state_dict()
    for key in ("state_dict", "model_state", "model"):
        if isinstance(value, dict) and isinstance(value.get(key), dict):
            value = value[key]
            break
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ModelLoadError(f"{path}: holds no state dict of tensors")
    return value


def pickle_refused(path: str | Path) -> ModelLoadError:
    """The error for a pickle weight file loaded without ``trust_pickle``."""
    return ModelLoadError(
        f"{path}: a pickle checkpoint, refused: unpickling a file runs any code stored in it. "
        "If you trust where it comes from, pass trust_pickle=True (CLI: --trust-pickle), then "
        "save the model once with SpeakerModel.save (safetensors) and use that"
    )
