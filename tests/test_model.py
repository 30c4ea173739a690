"""SpeakerModel: build, save -> load round trip through safetensors, clear load errors."""

from __future__ import annotations

import pytest
import torch
import yaml

import lapsv
from conftest import tiny_hf_config
from lapsv import HFFrontend, SpeakerModel, build_backend
from lapsv.audio import load_audio, pad_batch
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.errors import ConfigError, ModelLoadError


@pytest.fixture
def tiny_hf_model() -> SpeakerModel:
    frontend = HFFrontend.from_config(tiny_hf_config("wavlm"), source="tiny-test-wavlm")
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    return SpeakerModel(frontend, backend).eval()


def no_pickle(*args, **kwargs):
    raise AssertionError("torch.load (pickle) must not be used to load a lapsv model")


def test_save_load_round_trip_is_exact_and_pickle_free(tmp_path, tiny_hf_model, monkeypatch):
    waveforms, lengths = pad_batch([torch.randn(5000).numpy(), torch.randn(3000).numpy()])
    expected = tiny_hf_model.embed_batch(waveforms, lengths)
    tiny_hf_model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.yaml",
        "model.safetensors",
    ]
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = SpeakerModel.load(tmp_path / "model")
    assert torch.equal(loaded.embed_batch(waveforms, lengths), expected)
    assert loaded.config == tiny_hf_model.config


def test_saved_config_is_readable_and_self_describing(tmp_path, tiny_hf_model):
    tiny_hf_model.save(tmp_path / "model")
    header = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert header["lapsv_version"] == lapsv.__version__
    assert header["embed_dim"] == 192
    backend = header["model"]["backend"]
    assert (backend["aggregation"], backend["in_dim"], backend["n_layers"]) == ("lap", 32, 3)
    assert header["model"]["frontend"]["hf_config"]["model_type"] == "wavlm"


def test_ge2e_model_round_trip_on_real_speech(tmp_path, clips):
    model = SpeakerModel.build(ModelConfig(backend=BackendConfig(aggregation="superb")))
    waveforms, lengths = pad_batch([load_audio(path) for path in clips.values()])
    expected = model.embed_batch(waveforms, lengths)
    loaded = lapsv.load_model(model.save(tmp_path / "ge2e-superb"))
    assert torch.equal(loaded.embed_batch(waveforms, lengths), expected)


def test_save_replaces_an_existing_model_directory(tmp_path, tiny_hf_model):
    target = tmp_path / "model"
    tiny_hf_model.save(target)
    with torch.no_grad():
        tiny_hf_model.backend.network.temporal.head.projection.bias.fill_(1.0)
    tiny_hf_model.save(target)
    loaded = SpeakerModel.load(target)
    assert loaded.backend.network.temporal.head.projection.bias.eq(1.0).all()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary leftovers


def test_mismatched_weights_name_the_tensors(tmp_path, tiny_hf_model):
    target = tiny_hf_model.save(tmp_path / "model")
    header = yaml.safe_load((target / "config.yaml").read_text())
    header["model"]["backend"]["lap_out_dim"] = 64
    (target / "config.yaml").write_text(yaml.safe_dump(header))
    with pytest.raises(ModelLoadError, match=r"backend\.network\.aggregation\.out_proj\.weight"):
        SpeakerModel.load(target)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="built-in models: ge2e"):
        lapsv.load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="missing config.yaml"):
        lapsv.load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="is a directory holding"):
        lapsv.load_model(__file__)


def test_frontend_and_backend_sizes_must_agree():
    frontend = HFFrontend.from_config(tiny_hf_config("wavlm"))
    with pytest.raises(ConfigError, match="backend expects 13 layers of width 768"):
        SpeakerModel(frontend, build_backend("lap", "astp", in_dim=768, n_layers=13))


def test_build_fills_backend_sizes_from_the_frontend():
    config = ModelConfig(frontend=FrontendConfig(name="ge2e"), backend=BackendConfig())
    model = SpeakerModel.build(config, pretrained=False)
    assert (model.config.backend.in_dim, model.config.backend.n_layers) == (256, 3)
    assert config.backend.in_dim is None  # the user's config is not written back


def test_builtin_ge2e_model_embeds_unit_vectors(clips):
    model = lapsv.load_model("ge2e")
    waveforms, lengths = pad_batch([load_audio(path) for path in clips.values()])
    embeddings = model.embed_batch(waveforms, lengths)
    assert embeddings.shape == (len(clips), 256)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(clips)))
