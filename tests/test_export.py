"""lapsv export: ONNX / TorchScript with dynamic batch and time, parity with PyTorch,
and exported files used as MODEL (verify, Python API)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import lapsv
from lapsv.audio import load_audio, pad_batch
from lapsv.cli import main
from lapsv.errors import ConfigError, ModelLoadError
from lapsv.export import DFTMelSpectrogram, GE2EGraph, export_model
from lapsv.frontends.ge2e import GE2EEncoder
from test_api import add_calibration, tiny_model

SECONDS = (1.0, 3.0, 10.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tiny_model().save(tmp_path_factory.mktemp("export") / "tiny")
    add_calibration(directory, 16)
    return directory


@dataclasses.dataclass
class Exported:
    path: Path
    printed: str


@pytest.fixture(scope="module")
def tiny_onnx(tiny_dir):
    """``lapsv export`` of the tiny calibrated model, and what it printed."""
    out = tiny_dir.parent / "tiny.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(tiny_dir), "--format", "onnx", "--out", str(out)]) == 0
    return Exported(out, printed.getvalue())


def test_onnx_equals_pytorch_for_1_3_10_seconds_with_onnxruntime(tiny_dir, tiny_onnx):
    model = lapsv.load_model(tiny_dir)
    session = onnxruntime.InferenceSession(str(tiny_onnx.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveforms", "lengths"]
    assert session.get_inputs()[0].shape == ["batch", "samples"]  # dynamic axes
    rng = np.random.default_rng(0)
    for seconds in SECONDS:
        wave = (0.1 * rng.normal(size=(1, int(seconds * 16000)))).astype(np.float32)
        lengths = np.array([wave.shape[1]])
        (onnx_out,) = session.run(None, {"waveforms": wave, "lengths": lengths})
        torch_out = model.embed_batch(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
        assert np.abs(onnx_out - torch_out).max() < 1e-4, seconds


def test_cli_export_checks_and_prints_the_parity(tiny_dir, tiny_onnx):
    assert f"-> {tiny_onnx.path} (onnx" in tiny_onnx.printed
    figures = re.search(
        r"1 s: ([\d.e+-]+) +3 s: ([\d.e+-]+) +10 s: ([\d.e+-]+) +batch of all: ([\d.e+-]+)",
        tiny_onnx.printed,
    )
    assert figures and max(map(float, figures.groups())) < 1e-4


def test_onnx_batch_of_different_lengths(tiny_dir, tiny_onnx, clips):
    model, exported = lapsv.load_model(tiny_dir), lapsv.load_model(tiny_onnx.path)
    waveforms, lengths = pad_batch([load_audio(p) for p in clips.values()])
    expected = model.embed_batch(waveforms, lengths)
    assert (exported.embed_batch(waveforms, lengths) - expected).abs().max() < 1e-4


def test_verify_on_the_exported_model_equals_pytorch(tiny_dir, tiny_onnx, clips, capsys):
    a, b = str(clips["speaker_a_1"]), str(clips["speaker_b_1"])

    def run(model: str) -> dict[str, float | str]:
        assert main(["verify", model, a, b]) == 0
        out = capsys.readouterr().out
        numbers = dict(re.findall(r"^(cosine|AS-norm|calibrated LLR)[^:]*: ([-+.\d]+)$", out, re.M))
        numbers["decision"] = re.search(r"decision: (\w+)", out).group(1)
        return numbers

    torch_result, onnx_result = run(str(tiny_dir)), run(str(tiny_onnx.path))
    assert set(torch_result) == {"cosine", "AS-norm", "calibrated LLR", "decision"}
    assert onnx_result["decision"] == torch_result["decision"]
    for key in ("cosine", "AS-norm", "calibrated LLR"):
        assert abs(float(onnx_result[key]) - float(torch_result[key])) < 1e-3  # printed digits
    exported, model = lapsv.load_model(tiny_onnx.path), lapsv.load_model(tiny_dir)
    ours, theirs = model.verify(a, b), exported.verify(a, b)
    for field in ("cosine", "asnorm", "llr"):
        assert abs(getattr(ours, field) - getattr(theirs, field)) < 1e-4
    assert ours.same == theirs.same and theirs.threshold_source == ours.threshold_source
    assert exported.model_id == model.model_id


def test_torchscript_export_equals_pytorch(tiny_dir, tmp_path, clips):
    model = lapsv.load_model(tiny_dir)
    result = export_model(model, tmp_path / "tiny.pt", format="torchscript", check_seconds=(1, 3))
    assert result.worst < 1e-4
    exported = lapsv.load_model(result.path)
    a = clips["speaker_a_1"]
    assert np.abs(exported.embed(a) - model.embed(a)).max() < 1e-4
    assert exported.scoring.calibrated


def test_ge2e_graph_keeps_resemblyzer_windows_for_every_length():
    encoder = GE2EEncoder().eval()
    graph = GE2EGraph(encoder).eval()
    # lengths around the window rule's edges: 1.6 s windows, 77-frame steps, 75 % coverage
    lengths = [4000, 25599, 25600, 25760, 37919, 38080, 38081, 50000, 63999, 64321, 90000]
    waves = [0.1 * torch.randn(n) for n in lengths]
    waveforms, lens = pad_batch([w.numpy() for w in waves])
    with torch.no_grad():
        assert (graph(waveforms, lens) - encoder.embed_batch(waveforms, lens)).abs().max() < 1e-5


def test_builtin_ge2e_exports_to_onnx(tmp_path):
    model = lapsv.load_model("ge2e")
    result = export_model(model, tmp_path / "ge2e.onnx", source="ge2e")
    assert result.worst < 1e-4
    assert lapsv.load_model(result.path).model_id == model.model_id


def test_dft_mel_matches_stft_mel():
    mel = GE2EEncoder().frontend.mel
    x = 0.1 * torch.randn(3, 16000 * 3)
    reference = mel(x)
    assert (DFTMelSpectrogram(mel)(x) - reference).abs().max() < 1e-5 * reference.abs().max()


def test_export_errors_are_clear(tiny_dir, tmp_path, capsys):
    model = lapsv.load_model(tiny_dir)
    with pytest.raises(ConfigError, match=r"must end with \.onnx"):
        export_model(model, tmp_path / "model.bin", format="onnx")
    with pytest.raises(ConfigError, match="format must be"):
        export_model(model, tmp_path / "model.onnx", format="tflite")
    stray = tmp_path / "stray.onnx"
    stray.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load ONNX"):
        lapsv.load_model(stray)
    assert main(["export", str(tiny_dir), "--format", "onnx", "--out", str(tmp_path / "x.pt")]) == 2
    assert "must end with .onnx" in capsys.readouterr().err
