"""Shared fixtures: tiny randomly initialised speech encoders, real test clips."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.training.config import DataConfig, LossConfig, OptimConfig, TrainConfig

DATA = Path(__file__).parent / "data"

TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32, 32, 32),
    "conv_stride": (5, 4, 4, 4),  # 320x down-sampling, 50 frames per second, as the real ones
    "conv_kernel": (10, 4, 4, 4),
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}


def tiny_hf_config(model_type: str, feat_extract_norm: str = "layer"):
    """A 2-layer, hidden-32 config of a transformers speech encoder (random weights)."""
    config_classes = {
        "wavlm": transformers.WavLMConfig,
        "hubert": transformers.HubertConfig,
        "wav2vec2": transformers.Wav2Vec2Config,
        "data2vec-audio": transformers.Data2VecAudioConfig,
    }
    options = dict(TINY_ENCODER, feat_extract_norm=feat_extract_norm)
    if model_type == "data2vec-audio":
        options.pop("feat_extract_norm")
        options.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=3)
    return config_classes[model_type](**options)


def tiny_train_config(
    corpus: dict[str, Path],
    *,
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> TrainConfig:
    """Stage 1 of LAP + ASTP and SUPERB + ASTP (same run) on a tiny random WavLM.

    ``corpus`` holds the train / val manifests and val trials (``synthetic.make_corpus``)
    and optionally MUSAN / RIR folders; ``data`` changes fields of the data section,
    ``changes`` replace any other TrainConfig field.
    """
    config = TrainConfig(
        name="lap_astp",
        model=ModelConfig(
            frontend=FrontendConfig(
                name="hf", hf_config=tiny_hf_config("wavlm").to_dict(), freeze=True
            ),
            backend=BackendConfig(lap_heads=4, lap_out_dim=32, embed_dim=16),
        ),
        compare={"superb_astp": {"aggregation": "superb"}},
        data=DataConfig(
            train_manifest=str(corpus["train"]),
            val_manifest=str(corpus["val"]),
            val_trials=str(corpus["val_trials"]),
            crop_seconds=0.5,
            musan=str(corpus["musan"]) if "musan" in corpus else None,
            rirs=str(corpus["rirs"]) if "rirs" in corpus else None,
            num_workers=0,
            mean_utterances=6,
        ),
        optim=OptimConfig(epochs=3, batch_size=12, lr=5e-3, final_lr=1e-4),
        loss=LossConfig(margin_ramp_epochs=2),
        keep_best=2,
    )
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, **(data or {})))
    return dataclasses.replace(config, **changes)


def assert_padding_invariant(embed, waves, *, atol: float = 1e-4) -> None:
    """Each waveform embedded alone equals its row in one zero-padded batch of all."""
    from lapsv.audio import pad_batch

    waveforms, lengths = pad_batch(waves)
    batched = embed(waveforms, lengths)
    for row, wave in enumerate(waves):
        alone = embed(torch.as_tensor(wave)[None], torch.tensor([len(wave)]))
        assert (alone[0] - batched[row]).abs().max() < atol, f"item {row} changed with padding"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Converted weights (Whisper from CTranslate2) go to a per-run cache, not ~/.cache."""
    os.environ["LAPSV_CACHE_DIR"] = str(tmp_path_factory.mktemp("lapsv-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clips() -> dict[str, Path]:
    return {path.stem: path for path in sorted(DATA.glob("*.flac"))}
