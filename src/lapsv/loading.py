"""``load_model``: one entry point for built-in names, model directories and hub ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lapsv.errors import ModelLoadError
from lapsv.frontends.ge2e import GE2EEncoder
from lapsv.model import CONFIG_FILE, WEIGHTS_FILE, SpeakerModel

# Models usable by name with no training and no network.
BUILTIN_MODELS: dict[str, Callable[[], nn.Module]] = {
    "ge2e": GE2EEncoder.from_pretrained,
}


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a speaker model in eval mode.

    Args:
        name_or_path: a built-in name (``"ge2e"``), a model directory written by
            :meth:`SpeakerModel.save`, or a Hugging Face hub id holding such a directory.
        device: where to put it.
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]().to(device).eval()
    path = Path(name)
    if path.is_dir():
        return SpeakerModel.load(path, map_location=device)
    if path.exists():
        raise ModelLoadError(
            f"{path}: a lapsv model is a directory holding {CONFIG_FILE} + {WEIGHTS_FILE}"
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
            repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
        )
    except Exception as error:
        raise ModelLoadError(
            f"cannot download model '{repo_id}' ({error}); without network, copy the model "
            "directory here and pass its path"
        ) from error
    return Path(local)
