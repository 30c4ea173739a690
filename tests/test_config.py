"""Config: strict dataclass loading, dotted overrides, YAML round trip."""

from __future__ import annotations

import pytest

from lapsv.config import (
    BackendConfig,
    ModelConfig,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_yaml,
    to_dict,
)
from lapsv.errors import ConfigError


def test_round_trip_through_yaml(tmp_path):
    config = ModelConfig(backend=BackendConfig(aggregation="superb", embed_dim=256))
    path = tmp_path / "model.yaml"
    path.write_text(dump_yaml(to_dict(config)))
    assert from_dict(ModelConfig, load_yaml(path)) == config


def test_unknown_keys_name_their_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown config key 'backend\.lap_head'"):
        from_dict(ModelConfig, {"backend": {"lap_head": 4}})


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="must be an integer"):
        from_dict(BackendConfig, {"embed_dim": "big"})
    with pytest.raises(ConfigError, match="true or false"):
        from_dict(ModelConfig, {"frontend": {"freeze": "yes"}})
    assert from_dict(BackendConfig, {"lap_score_dropout": 0}).lap_score_dropout == 0.0


def test_overrides_parse_yaml_values_and_do_not_mutate_the_input():
    base = {"backend": {"aggregation": "lap"}}
    merged = apply_overrides(base, ["backend.embed_dim=256", "frontend.freeze=false"])
    assert merged == {
        "backend": {"aggregation": "lap", "embed_dim": 256},
        "frontend": {"freeze": False},
    }
    assert base == {"backend": {"aggregation": "lap"}}
    assert from_dict(ModelConfig, merged).backend.embed_dim == 256
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(base, ["backend.embed_dim"])


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        BackendConfig().embed_dim = 3


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("backend: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")
