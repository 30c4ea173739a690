"""Training state without pickle: nested Python values + tensors in one safetensors file.

Optimizer, AMP scaler and random-generator states are trees of dicts, lists, tuples,
numbers, strings, tensors and numpy arrays. :func:`save_tree` stores the tensors as
safetensors and the tree around them as JSON in the file's metadata; :func:`load_tree`
rebuilds it exactly (tuples stay tuples, integer dict keys stay integers). Reading a
checkpoint therefore never runs code from the file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

TREE_KEY = "lapsv_tree"


def encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able description of ``value``; its tensors are moved into ``tensors``.

    >>> tensors = {}
    >>> encode({1: (2.5, "x", None)}, tensors)
    {'dict': [[{'int': 1}, {'tuple': [{'float': '2.5'}, {'str': 'x'}, {'none': None}]}]]}
    """
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().clone().contiguous()
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {"dict": [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v, tensors) for v in value]}
    if value is None:
        return {"none": None}
    if isinstance(value, bool | np.bool_):
        return {"bool": bool(value)}
    if isinstance(value, int | np.integer):
        return {"int": int(value)}
    if isinstance(value, float | np.floating):
        return {"float": repr(float(value))}  # repr keeps nan/inf and every bit
    if isinstance(value, str):
        return {"str": value}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint without pickle")


def decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    (kind, payload), *_ = node.items()
    if kind == "tensor":
        return tensors[payload]
    if kind == "ndarray":
        return np.array(payload, dtype=node["dtype"]).reshape(node["shape"])
    if kind == "dict":
        return {decode(k, tensors): decode(v, tensors) for k, v in payload}
    if kind == "tuple":
        return tuple(decode(v, tensors) for v in payload)
    if kind == "list":
        return [decode(v, tensors) for v in payload]
    if kind == "float":
        return float(payload)
    if kind in ("none", "bool", "int", "str"):
        return payload
    raise ValueError(f"unknown node kind {kind!r}")


def save_tree(value: Any, path: str | Path) -> None:
    """Write ``value`` to a safetensors file (tensors) with its structure in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(value, tensors)
    metadata = {TREE_KEY: json.dumps(tree)}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_tree(path: str | Path) -> Any:
    """Read a file written by :func:`save_tree`."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    if TREE_KEY not in metadata:
        raise ValueError(f"{path}: not a lapsv state file")
    return decode(json.loads(metadata[TREE_KEY]), tensors)


def rng_state() -> dict[str, Any]:
    """Every global random generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
