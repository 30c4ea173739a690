"""The optimizer: Adam whose L2 weight decay reaches weight matrices only."""

from __future__ import annotations

import torch
from torch import nn

from lapsv.errors import ConfigError

DECAY_SCOPES = ("weights", "all")


def decay_groups(
    module: nn.Module, weight_decay: float, *, scope: str = "weights"
) -> list[dict[str, object]]:
    """Split trainable parameters into a decayed and a non-decayed Adam group.

    With ``scope="weights"`` only weight tensors of two or more dimensions decay: biases,
    normalisation parameters and layer-weight logits (SUPERB's softmax weights, LAP's
    per-layer excitation biases) do not. Adam adds the decay to the gradient before its
    per-parameter normalisation, so on a parameter with a small task gradient the decay
    wins and pins it at zero: SUPERB's weights stay uniform and LAP's static layer
    preference never forms. ``scope="all"`` decays everything, as the authors' code does.

    >>> net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    >>> [len(group["params"]) for group in decay_groups(net, 1e-3)]
    [1, 3]
    """
    if scope not in DECAY_SCOPES:
        raise ConfigError(f"optim.weight_decay_scope {scope!r}: choose one of {DECAY_SCOPES}")
    decayed, kept = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        is_weight = parameter.ndim >= 2 and not name.endswith("bias")
        (decayed if scope == "all" or is_weight else kept).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": kept, "weight_decay": 0.0},
    ]


def build_optimizer(
    module: nn.Module, *, lr: float, weight_decay: float, scope: str = "weights"
) -> torch.optim.Adam:
    """Adam over ``module``'s trainable parameters with :func:`decay_groups`."""
    return torch.optim.Adam(decay_groups(module, weight_decay, scope=scope), lr=lr)
