"""Frozen configuration dataclasses, YAML recipes and dotted command-line overrides.

A config is a tree of frozen dataclasses. ``from_dict`` is strict: an unknown key is an
error naming its dotted path, so a typo in a recipe never silently falls back to a default.
Derived values (feature size, number of layers) are computed when a model is built and
recorded in its saved config; they are never written back into the user's recipe.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lapsv.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Which pre-trained speech encoder produces the hidden layers.

    Args:
        name: ``"ge2e"`` (offline default, weights from the resemblyzer wheel), ``"hf"``
            (a Hugging Face WavLM / HuBERT / wav2vec 2.0 / data2vec-audio encoder) or
            ``"whisper"`` (OpenAI Whisper's encoder).
        source: hub id or local directory of the Hugging Face model; for ``"whisper"`` also
            a faster-whisper (CTranslate2) folder or a built-in offline name
            (``whisper-base``, ``whisper-tiny.en``).
        freeze: keep the encoder frozen in eval mode (stage 1).
        freeze_feature_encoder: when fine-tuning, keep the CNN waveform encoder (Whisper: the
            two input convolutions) frozen.
        gradient_checkpointing: recompute Transformer activations in backward (stages 2-3).
        normalize_waveform: zero-mean unit-variance per utterance before the encoder;
            ``None`` reads the choice from the source's feature-extractor config.
        hf_config: the resolved Hugging Face config (recorded when a model is saved, so that
            loading needs neither the hub nor the original directory).
    """

    name: str = "ge2e"
    source: str | None = None
    freeze: bool = True
    freeze_feature_encoder: bool = True
    gradient_checkpointing: bool = False
    normalize_waveform: bool | None = None
    hf_config: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """Layer aggregation + speaker network hyper-parameters (METHOD.md §2-3).

    ``in_dim`` and ``n_layers`` describe the frontend; they are filled in from it when a
    :class:`~lapsv.model.SpeakerModel` is built and are recorded in the saved config.
    ``aggregation`` is ``lap``, ``superb``, ``last`` or ``layer`` (the hidden layer
    ``layer_index`` alone). ``per_layer_norm`` normalises every hidden layer with its own
    BatchNorm statistics before aggregation (METHOD.md §9: for frontends whose layers differ
    in scale, such as Whisper).
    """

    aggregation: str = "lap"
    speaker_net: str = "astp"
    in_dim: int | None = None
    n_layers: int | None = None
    embed_dim: int = 192
    lap_heads: int = 16
    lap_out_dim: int = 512
    lap_score_dropout: float = 0.1
    lap_init: str = "xavier"  # "identity": the D->D input projection starts as identity
    per_layer_norm: bool = False  # BatchNorm statistics per layer and channel before aggregating
    layer_index: int | None = None  # aggregation "layer": which hidden layer (0 = embedding output)
    astp_bottleneck_ratio: float = 0.5
    astp_frame_dropout: float = 0.1
    ecapa_channels: int = 512
    mhfa_heads: int = 64
    mhfa_compression_dim: int = 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole speaker model: frontend + backend."""

    frontend: FrontendConfig = dataclasses.field(default_factory=FrontendConfig)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (YAML-safe)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    >>> from_dict(BackendConfig, {"aggregation": "superb"}).aggregation
    'superb'
    >>> from_dict(BackendConfig, {"agregation": "superb"})
    Traceback (most recent call last):
    ...
    lapsv.errors.ConfigError: unknown config key 'agregation' (valid keys: aggregation, ...
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"unknown config key '{where}' (valid keys: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        key_path = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key_path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Check ``value`` against a type hint, recursing into nested config dataclasses."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
        return from_dict(hint, value, path=path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{path}' has invalid value {value!r} (expected {hint})")
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
        return dict(value)
    if hint in _SCALARS:
        description, accepted = _SCALARS[hint]
        if isinstance(value, bool) is not (hint is bool) or not isinstance(value, accepted):
            raise ConfigError(f"config key '{path}' must be {description}, got {value!r}")
        return hint(value)
    return value


# scalar type -> (what the error message asks for, accepted Python types); YAML booleans
# are accepted only where a bool is expected, never as 0/1.
_SCALARS: dict[type, tuple[str, type | tuple[type, ...]]] = {
    bool: ("true or false", bool),
    int: ("an integer", int),
    float: ("a number", (int, float)),
    str: ("a string", str),
}


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of nested dict ``data`` with ``key.sub=value`` overrides applied.

    Values are parsed as YAML scalars (``true``, ``3``, ``1e-3``, ``[1, 2]``).

    >>> apply_overrides({"backend": {"aggregation": "lap"}}, ["backend.aggregation=superb"])
    {'backend': {'aggregation': 'superb'}}
    """
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: no such config file") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text of a nested dict, keys in insertion order."""
    return yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """Tuples become lists so that ``yaml.safe_dump`` accepts every config value."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
