"""Shared fixtures: tiny randomly initialised speech encoders, real test clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

DATA = Path(__file__).parent / "data"

TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32),
    "conv_stride": (5, 4),
    "conv_kernel": (10, 8),
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clips() -> dict[str, Path]:
    return {path.stem: path for path in sorted(DATA.glob("*.flac"))}
