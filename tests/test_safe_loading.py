"""Safe loading: weights come from safetensors; a pickle is refused unless trusted
(``trust_pickle=True`` / ``--trust-pickle``), whether it is a lapsv checkpoint or a Hugging
Face encoder; a config that does not match its weights is an error naming the tensors."""

from __future__ import annotations

import pathlib

import pytest
import safetensors.torch
import torch

from conftest import tiny_hf_config
from lapsv.cli import main
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig, dump_yaml, load_yaml
from lapsv.errors import ModelLoadError
from lapsv.model import SpeakerModel
from lapsv.speaker import load_model


class Payload:
    """Unpickling this runs code: it creates a file, as a malicious checkpoint could."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def tiny_model() -> SpeakerModel:
    config = ModelConfig(
        frontend=FrontendConfig(name="hf", hf_config=tiny_hf_config("wavlm").to_dict()),
        backend=BackendConfig(lap_heads=4, lap_out_dim=32, embed_dim=16),
    )
    return SpeakerModel.build(config, pretrained=False)


@pytest.fixture
def pickled(tmp_path):
    """A model directory whose weights are a pickle that also runs code when unpickled."""
    model = tiny_model()
    folder = model.save(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": model.state_dict(), "extra": Payload(marker)}, folder / "model.pt")
    return folder, marker, model


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.ckpt", "pytorch_model.bin"])
def test_pickle_weights_are_refused_without_running_them(pickled, name):
    folder, marker, _ = pickled
    (folder / "model.pt").rename(folder / name)
    for target in (folder, folder / name):
        with pytest.raises(ModelLoadError, match="pickle checkpoint, refused.*trust_pickle"):
            load_model(target)
    assert not marker.exists()


def test_trusted_pickle_loads(pickled):
    folder, marker, model = pickled
    loaded = load_model(folder / "model.pt", trust_pickle=True)
    assert marker.exists()  # what the flag allows: the file's code ran
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value)


def test_cli_refuses_pickle_unless_trusted(pickled, capsys):
    folder, marker, _ = pickled
    assert main(["info", str(folder)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()
    assert main(["info", str(folder), "--trust-pickle"]) == 0


def test_hugging_face_encoder_with_pickle_weights_only_is_refused(tmp_path):
    from transformers import WavLMModel

    from lapsv.frontends import HFFrontend

    encoder = WavLMModel(tiny_hf_config("wavlm"))
    safe, unsafe = tmp_path / "safe", tmp_path / "unsafe"
    encoder.save_pretrained(safe)  # model.safetensors
    assert (safe / "model.safetensors").is_file()
    encoder.config.save_pretrained(unsafe)
    torch.save(encoder.state_dict(), unsafe / "pytorch_model.bin")
    HFFrontend.from_pretrained(str(safe))
    with pytest.raises(ModelLoadError, match=r"no safetensors weights.*trust_pickle"):
        HFFrontend.from_pretrained(str(unsafe))
    trusted = HFFrontend.from_pretrained(str(unsafe), trust_pickle=True)
    key = "encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(trusted.model.state_dict()[key], encoder.state_dict()[key])


def test_hub_ids_fetch_only_safetensors(monkeypatch, pickled):
    import huggingface_hub

    folder, marker, _ = pickled
    asked = {}

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked["patterns"] = allow_patterns
        return str(folder)  # a repository that (also) holds a pickle

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model("someone/model")
    assert asked["patterns"] and all(
        not p.endswith((".pt", ".bin", ".ckpt", ".pth", ".pkl")) for p in asked["patterns"]
    )
    assert not marker.exists()


def test_config_and_weights_mismatch_names_the_tensors(tmp_path):
    folder = tiny_model().save(tmp_path / "model")
    header = load_yaml(folder / "config.yaml")
    header["model"]["backend"]["embed_dim"] = 24
    (folder / "config.yaml").write_text(dump_yaml(header))
    with pytest.raises(
        ModelLoadError,
        match=r"head\.projection\.weight has shape \(16, 64\), the config expects \(24, 64\)",
    ):
        load_model(folder)
    header["model"]["backend"]["embed_dim"] = 16
    (folder / "config.yaml").write_text(dump_yaml(header))
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    removed = sorted(weights)[0]
    weights.pop(removed)
    weights["unexpected.tensor"] = torch.zeros(1)
    safetensors.torch.save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing tensors") as error:
        load_model(folder)
    assert removed in str(error.value) and "unexpected.tensor" in str(error.value)


def model_verbs(folder: pathlib.Path, tmp: pathlib.Path) -> dict[str, list[str]]:
    """Every verb that loads a MODEL, with valid arguments for the bundled clips."""
    data = pathlib.Path(__file__).parent / "data"
    trials = tmp / "trials.txt"
    trials.write_text("1 speaker_a_1.flac speaker_a_2.flac\n0 speaker_a_1.flac speaker_b_1.flac\n")
    a1, b1 = str(data / "speaker_a_1.flac"), str(data / "speaker_b_1.flac")
    db = str(tmp / "speakers.db")
    return {
        "verify": ["verify", str(folder), a1, b1],
        "export": ["export", str(folder), "--format", "torchscript", "--out", str(tmp / "m.pt")],
        "eval": [
            "eval",
            str(folder),
            "--trials",
            str(trials),
            "--audio_root",
            str(data),
            "--out",
            str(tmp / "eval"),
        ],
        "enroll": ["enroll", str(folder), "--db", db, "alice", a1],
        "identify": ["identify", str(folder), "--db", db, b1],
    }


def test_every_model_verb_refuses_pickle_unless_trusted(pickled, tmp_path, capsys):
    folder, marker, _ = pickled
    for verb, argv in model_verbs(folder, tmp_path).items():
        assert main(argv) == 2, verb
        assert "--trust-pickle" in capsys.readouterr().err, verb
        assert not marker.exists(), verb
    for verb, argv in model_verbs(folder, tmp_path).items():  # enroll before identify
        assert main([*argv, "--trust-pickle"]) == 0, verb
    assert marker.exists()


def test_model_id_is_the_content_hash_whatever_the_file(pickled, tmp_path):
    """``model_id`` (also the evaluation cache's key) is the hash of the config and weights:
    the same weights in safetensors or a trusted pickle give one id, touching the file
    changes nothing, other weights give another id; an untrusted pickle is never opened."""
    import os

    folder, marker, model = pickled
    with pytest.raises(ModelLoadError, match="pickle checkpoint, refused"):
        load_model(folder)
    assert not marker.exists()
    safe = model.save(tmp_path / "safe")
    safe_id = load_model(safe).model_id
    assert safe_id == model.model_id == load_model(folder, trust_pickle=True).model_id
    os.utime(safe / "model.safetensors", ns=(1, 1))
    assert load_model(safe).model_id == safe_id
    assert tiny_model().model_id != safe_id  # other random weights
    assert load_model("ge2e").model_id.startswith("ge2e-")
