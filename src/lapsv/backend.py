"""The speaker backend: layer aggregation + speaker network, chosen by name.

``build_backend("lap", "astp", in_dim=D, n_layers=L)`` is the paper's system. The parts
are picked from two explicit dicts, :data:`AGGREGATIONS` and :data:`SPEAKER_NETS`; each
part reports its output size, so nothing is sized by config arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lapsv.config import BackendConfig
from lapsv.errors import ConfigError
from lapsv.layers.aggregation import LayerAttentivePooling, SingleLayer, SuperbWeightedSum
from lapsv.layers.ecapa import ECAPATDNN
from lapsv.layers.mhfa import MHFA
from lapsv.layers.pooling import ASTP


def _lap(config: BackendConfig) -> nn.Module:
    return LayerAttentivePooling(
        config.n_layers,
        config.in_dim,
        n_heads=config.lap_heads,
        out_dim=config.lap_out_dim,
        score_dropout=config.lap_score_dropout,
        per_layer_norm=config.per_layer_norm,
    )


def _superb(config: BackendConfig) -> nn.Module:
    return SuperbWeightedSum(config.n_layers, config.in_dim, per_layer_norm=config.per_layer_norm)


def _last(config: BackendConfig) -> nn.Module:
    return SingleLayer(config.n_layers, config.in_dim, per_layer_norm=config.per_layer_norm)


def _layer(config: BackendConfig) -> nn.Module:
    if config.layer_index is None:
        raise ConfigError("aggregation 'layer' needs backend.layer_index (0 = embedding output)")
    return SingleLayer(
        config.n_layers,
        config.in_dim,
        index=config.layer_index,
        per_layer_norm=config.per_layer_norm,
    )


AGGREGATIONS: dict[str, Callable[[BackendConfig], nn.Module]] = {
    "lap": _lap,
    "superb": _superb,
    "last": _last,
    "layer": _layer,
}


class AggregatedSpeakerNet(nn.Module):
    """Layer aggregation (B, L, T, D) -> (B, C, T), then a temporal network -> (B, E)."""

    def __init__(self, aggregation: nn.Module, temporal: nn.Module) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.temporal = temporal
        self.out_dim = temporal.out_dim

    def forward(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features, layer_weights = self.aggregation(hidden_states)
        return self.temporal(features, lengths), layer_weights


def _astp(config: BackendConfig) -> nn.Module:
    aggregation = AGGREGATIONS[config.aggregation](config)
    temporal = ASTP(
        aggregation.out_dim,
        embed_dim=config.embed_dim,
        bottleneck_ratio=config.astp_bottleneck_ratio,
        frame_dropout=config.astp_frame_dropout,
    )
    return AggregatedSpeakerNet(aggregation, temporal)


def _ecapa(config: BackendConfig) -> nn.Module:
    aggregation = AGGREGATIONS[config.aggregation](config)
    temporal = ECAPATDNN(
        aggregation.out_dim, channels=config.ecapa_channels, embed_dim=config.embed_dim
    )
    return AggregatedSpeakerNet(aggregation, temporal)


def _mhfa(config: BackendConfig) -> nn.Module:
    make_aggregation = AGGREGATIONS[config.aggregation]
    return MHFA(
        make_aggregation(config),
        make_aggregation(config),
        n_heads=config.mhfa_heads,
        compression_dim=config.mhfa_compression_dim,
        embed_dim=config.embed_dim,
    )


SPEAKER_NETS: dict[str, Callable[[BackendConfig], nn.Module]] = {
    "astp": _astp,
    "ecapa": _ecapa,
    "mhfa": _mhfa,
}


class SpeakerBackend(nn.Module):
    """Everything after the frontend: (B, L, T, D) hidden states + lengths -> (B, E).

    Build it with :func:`build_backend`. Weights are Xavier-uniform (every weight with more
    than one dimension), biases zero, as in METHOD.md §3.
    """

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        _check_backend_config(config)
        self.config = config
        self.network = SPEAKER_NETS[config.speaker_net](config)
        self.embed_dim = self.network.out_dim
        _xavier_init(self)
        for module in self.modules():
            if isinstance(module, LayerAttentivePooling):
                module.init_input_projection(config.lap_init)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, L, T, D), lengths (B,) valid frames -> embeddings (B, E)."""
        return self.network(hidden_states, lengths)[0]

    def forward_with_layer_weights(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, E) and the aggregation's layer weights (B, H, T, L)."""
        return self.network(hidden_states, lengths)


def build_backend(
    aggregation: str = "lap",
    speaker_net: str = "astp",
    *,
    in_dim: int,
    n_layers: int,
    **options: Any,
) -> SpeakerBackend:
    """Build a speaker backend by name.

    Args:
        aggregation: ``"lap"``, ``"superb"``, ``"last"`` or ``"layer"`` (one hidden layer,
            ``layer_index``).
        speaker_net: ``"astp"``, ``"ecapa"`` or ``"mhfa"``.
        in_dim: D, width of the frontend's hidden layers.
        n_layers: L, number of hidden layers (Transformer layers + 1).
        **options: other :class:`~lapsv.config.BackendConfig` fields (``embed_dim``,
            ``lap_heads``, ``ecapa_channels``, ...).

    Example:
        >>> backend = build_backend("lap", "astp", in_dim=768, n_layers=13)
        >>> sum(p.numel() for p in backend.parameters())
        1714480
        >>> backend.eval()(torch.randn(2, 13, 50, 768), torch.tensor([50, 30])).shape
        torch.Size([2, 192])
    """
    valid = {field.name for field in dataclasses.fields(BackendConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"unknown backend option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    config = BackendConfig(
        aggregation=aggregation,
        speaker_net=speaker_net,
        in_dim=in_dim,
        n_layers=n_layers,
        **options,
    )
    return SpeakerBackend(config)


def _check_backend_config(config: BackendConfig) -> None:
    if config.aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"unknown aggregation '{config.aggregation}'; choose one of {sorted(AGGREGATIONS)}"
        )
    if config.speaker_net not in SPEAKER_NETS:
        raise ConfigError(
            f"unknown speaker_net '{config.speaker_net}'; choose one of {sorted(SPEAKER_NETS)}"
        )
    if config.in_dim is None or config.n_layers is None:
        raise ConfigError("backend needs in_dim and n_layers (taken from the frontend)")


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear and Conv1d."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv1d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
