"""Run a model file written by ``lapsv export`` (ONNX or TorchScript) as an encoder.

The file's metadata (ONNX ``metadata_props`` / TorchScript extra file ``lapsv.json``) names
the format, the source model's id, embedding size, sample rate, the longest input the graph
takes, and the scoring state, which :func:`lapsv.load_model` attaches.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lapsv.errors import ModelLoadError

METADATA_FORMAT = "lapsv-export"
METADATA_VERSION = 1
EXTRA_FILE = "lapsv.json"  # TorchScript: the metadata as one JSON extra file
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
EXPORTED_SUFFIXES = SUFFIXES["onnx"] + SUFFIXES["torchscript"]


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' advice that does not apply here (all checked by parity)."""
    with warnings.catch_warnings():
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        with contextlib.suppress(AttributeError):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class ExportedEncoder:
    """A file written by :func:`~lapsv.export.export_model`, as an encoder: ``embed_batch``.

    ONNX files run with onnxruntime (CPU), TorchScript files with ``torch.jit.load``;
    :func:`lapsv.load_model` wraps one in a :class:`~lapsv.speaker.Speaker` for ``.onnx`` /
    ``.pt`` / ``.ts`` paths, with the scoring state read from its :attr:`metadata`.
    """

    def __init__(self, path: Path, runner, metadata: dict[str, str], kind: str) -> None:
        if metadata.get("lapsv.format") != METADATA_FORMAT:
            raise ModelLoadError(f"{path}: not a model exported by lapsv (no lapsv metadata)")
        if int(metadata.get("lapsv.format_version", 0)) > METADATA_VERSION:
            raise ModelLoadError(f"{path}: exported by a newer lapsv; upgrade lapsv")
        self.path, self.kind, self.metadata = path, kind, metadata
        self._runner = runner
        self.embed_dim = int(metadata["lapsv.embed_dim"])
        self.sample_rate = int(metadata["lapsv.sample_rate"])
        limit = metadata.get("lapsv.max_input_seconds")
        self.max_input_seconds = None if limit is None else float(limit)

    @property
    def model_id(self) -> str:
        """The id of the model it was exported from (same embeddings within 1e-4)."""
        return self.metadata["lapsv.model_id"]

    @property
    def source(self) -> str:
        """What it was exported from (the MODEL argument of ``lapsv export``)."""
        return self.metadata.get("lapsv.source", "")

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> ExportedEncoder:
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        if path.suffix.lower() == ".onnx":
            try:
                import onnxruntime
            except ImportError as error:
                raise ModelLoadError(
                    "running an .onnx model needs onnxruntime: pip install 'lapsv[export]'"
                ) from error
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            try:
                session = onnxruntime.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as error:  # onnxruntime raises its own untyped errors
                raise ModelLoadError(f"{path}: cannot load ONNX model ({error})") from error
            metadata = dict(session.get_modelmeta().custom_metadata_map)
            return cls(path, session, metadata, "onnx")
        extra = {EXTRA_FILE: ""}
        try:
            with quiet_export():
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as error:  # torch.jit raises RuntimeError and others
            raise ModelLoadError(f"{path}: cannot load TorchScript model ({error})") from error
        try:
            metadata = json.loads(extra[EXTRA_FILE] or "{}")
        except ValueError as error:
            raise ModelLoadError(f"{path}: unreadable lapsv metadata ({error})") from error
        model = cls(path, module.eval(), metadata, "torchscript")
        model._device = torch.device(device)
        return model

    _device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) zero-padded waveforms, (B,) lengths -> (B, E) float32 CPU tensor."""
        if self.kind == "onnx":
            feeds = {
                "waveforms": np.ascontiguousarray(waveforms.detach().cpu().numpy(), np.float32),
                "lengths": np.ascontiguousarray(lengths.detach().cpu().numpy(), np.int64),
            }
            return torch.from_numpy(self._runner.run(["embeddings"], feeds)[0])
        with torch.no_grad():
            output = self._runner(
                waveforms.to(self._device, torch.float32), lengths.to(self._device, torch.long)
            )
        return output.float().cpu()
