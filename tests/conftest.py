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


def assert_padding_invariant(embed, waves, *, atol: float = 1e-4) -> None:
    """Each waveform embedded alone equals its row in one zero-padded batch of all."""
    from lapsv.audio import pad_batch

    waveforms, lengths = pad_batch(waves)
    batched = embed(waveforms, lengths)
    for row, wave in enumerate(waves):
        alone = embed(torch.as_tensor(wave)[None], torch.tensor([len(wave)]))
        assert (alone[0] - batched[row]).abs().max() < atol, f"item {row} changed with padding"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clips() -> dict[str, Path]:
    return {path.stem: path for path in sorted(DATA.glob("*.flac"))}
