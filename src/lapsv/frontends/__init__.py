"""Frontends: pre-trained speech encoders exposing all hidden layers as (B, L, T, D)."""

from __future__ import annotations

from collections.abc import Callable

from lapsv.config import FrontendConfig
from lapsv.errors import ConfigError
from lapsv.frontends.base import Frontend, FrontendOutput
from lapsv.frontends.ge2e import GE2EEncoder, GE2EFrontend
from lapsv.frontends.hf import HFFrontend, hf_frontend_from_config
from lapsv.frontends.whisper import WhisperFrontend, whisper_frontend_from_config


def _ge2e(config: FrontendConfig, *, pretrained: bool, trust_pickle: bool = False) -> Frontend:
    # resemblyzer's weights come from the installed wheel, read with torch's tensors-only
    # unpickler (weights_only=True): no trust needed
    if pretrained:
        return GE2EFrontend.from_pretrained(freeze=config.freeze)
    return GE2EFrontend(freeze=config.freeze)


FRONTENDS: dict[str, Callable[..., Frontend]] = {
    "ge2e": _ge2e,
    "hf": hf_frontend_from_config,
    "whisper": whisper_frontend_from_config,
}


def build_frontend(
    config: FrontendConfig, *, pretrained: bool = True, trust_pickle: bool = False
) -> Frontend:
    """Build a frontend from its config.

    Args:
        config: which encoder and how it is trained.
        pretrained: load pre-trained weights (GE2E from resemblyzer's wheel, HF and Whisper
            from ``config.source``); False builds the recorded architecture with random
            weights, to be filled from a saved model's safetensors.
        trust_pickle: allow a Hugging Face source whose only weights are a pickle.
    """
    if config.name not in FRONTENDS:
        raise ConfigError(f"unknown frontend '{config.name}'; choose one of {sorted(FRONTENDS)}")
    return FRONTENDS[config.name](config, pretrained=pretrained, trust_pickle=trust_pickle)


__all__ = [
    "FRONTENDS",
    "Frontend",
    "FrontendOutput",
    "GE2EEncoder",
    "GE2EFrontend",
    "HFFrontend",
    "WhisperFrontend",
    "build_frontend",
]
