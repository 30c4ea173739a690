"""Weight decay reaches weight matrices only, so layer weights are free to move."""

from __future__ import annotations

import pytest
import torch

from lapsv.backend import build_backend
from lapsv.errors import ConfigError
from lapsv.training.optim import build_optimizer, decay_groups


def _decay_steps(scope: str) -> dict[str, torch.Tensor]:
    """Ten Adam steps whose only gradient is the weight decay (task loss is zero)."""
    backend = build_backend("superb", "astp", in_dim=8, n_layers=3, embed_dim=4)
    torch.nn.init.normal_(backend.network.aggregation.layer_logits)
    before = {name: p.detach().clone() for name, p in backend.named_parameters()}
    optimizer = build_optimizer(backend, lr=0.1, weight_decay=1.0, scope=scope)
    for _ in range(10):
        optimizer.zero_grad()
        for parameter in backend.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    return {name: (p.detach() - before[name]).abs().max() for name, p in backend.named_parameters()}


def test_superb_layer_logits_and_biases_do_not_decay() -> None:
    moved = _decay_steps("weights")
    assert moved["network.aggregation.layer_logits"] == 0
    assert all(change == 0 for name, change in moved.items() if name.endswith("bias"))
    assert any(change > 0 for name, change in moved.items() if name.endswith("weight"))


def test_scope_all_decays_layer_logits_like_the_authors_code() -> None:
    assert _decay_steps("all")["network.aggregation.layer_logits"] > 0.5


def test_lap_static_layer_preference_is_not_decayed() -> None:
    backend = build_backend("lap", "astp", in_dim=16, n_layers=3, embed_dim=4, lap_heads=4)
    decayed, kept = (set(map(id, group["params"])) for group in decay_groups(backend, 1e-3))
    named = dict(backend.named_parameters())
    assert id(named["network.aggregation.excite_bias"]) in kept
    assert id(named["network.aggregation.excite_weight"]) in decayed


def test_unknown_scope_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="weight_decay_scope"):
        decay_groups(torch.nn.Linear(2, 2), 1e-3, scope="some")
