"""``load_model``: one entry point for built-in names, model directories, hub ids and
exported files (``.onnx``, TorchScript ``.pt`` / ``.ts``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lapsv.api import SpeakerAPI, state_fingerprint
from lapsv.errors import ModelLoadError
from lapsv.frontends.ge2e import GE2EEncoder
from lapsv.model import CONFIG_FILE, WEIGHTS_FILE, SpeakerModel, is_pickle_checkpoint

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")


class PretrainedGE2E(SpeakerAPI, GE2EEncoder):
    """The built-in ``ge2e`` model: resemblyzer's GE2E encoder with lapsv's Python API.

    ``embed(waveforms, lengths)`` / :meth:`embed_batch` is :meth:`GE2EEncoder.embed`.
    """

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return GE2EEncoder.embed(self, waveforms, lengths)

    @property
    def model_id(self) -> str:
        return "ge2e-" + state_fingerprint(self)


# Models usable by name with no training and no network.
BUILTIN_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "ge2e": PretrainedGE2E.from_pretrained,
}


def load_model(
    name_or_path: str | Path, *, device: str | torch.device = "cpu", trust_pickle: bool = False
) -> SpeakerAPI:
    """Load a speaker model in eval mode, with its scoring state (mean, cohort, QMF).

    Args:
        name_or_path: a built-in name (``"ge2e"``), a model directory written by
            :meth:`SpeakerModel.save`, a Hugging Face hub id holding such a directory, or a
            file written by ``lapsv export`` (``.onnx``, run with onnxruntime; TorchScript).
        device: where to put it (exported ONNX models run on the CPU).
        trust_pickle: allow pickle weights (``.pt`` / ``.bin`` / ``.ckpt`` checkpoints, with
            ``config.yaml`` beside them); without it they are refused, as unpickling runs any
            code the file carries. Hub ids only ever fetch safetensors.

    Every result has the API of :class:`~lapsv.api.SpeakerAPI` (``embed``, ``verify``,
    ``similarity``, ``embed_batch``, ``model_id``, ``scoring``).
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]().to(device).eval()
    path = Path(name)
    if path.is_dir() or (path.is_file() and is_pickle_checkpoint(path)):
        return SpeakerModel.load(path, map_location=device, trust_pickle=trust_pickle)
    if path.is_file() and path.suffix.lower() in ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES:
        from lapsv.export import ExportedModel

        return ExportedModel.load(path, device=device)
    if path.exists():
        raise ModelLoadError(
            f"{path}: a lapsv model is a directory holding {CONFIG_FILE} + {WEIGHTS_FILE}, "
            f"or a file from `lapsv export` ({', '.join(ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES)})"
        )
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return SpeakerModel.load(_download(name), map_location=device)
    raise ModelLoadError(
        f"{name}: no such model directory; built-in models: {', '.join(BUILTIN_MODELS)}"
    )


def _download(repo_id: str) -> Path:
    import huggingface_hub  # a dependency of transformers; imported only for hub ids

    try:
        local = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, "scoring.npz", "qmf.json"]
        )
    except Exception as error:
        raise ModelLoadError(
            f"cannot download model '{repo_id}' ({error}); without network, copy the model "
            "directory here and pass its path"
        ) from error
    return Path(local)
