"""cluster.yaml passes Ray's own autoscaler validation (offline) and keeps the roles the docs promise."""

from __future__ import annotations

import copy

import yaml

from tests.conftest import REPO


def test_cluster_yaml_is_valid_for_the_ray_autoscaler():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no work
    assert types["gpu_worker"]["resources"]["GPU"] > 0
    assert types["index_worker"]["resources"]["index_shard"] > 0
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_the_validation_really_checks():
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(config))
