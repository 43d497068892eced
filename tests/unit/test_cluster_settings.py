"""ClusterSettings travel inside the compiled pipeline as JSON, to compile the next segment's run the same way."""

import json

import pytest

from kubetune.cluster_settings import ClusterSettings


def test_the_settings_come_back_equal_from_json():
    settings = ClusterSettings(
        image="img:1",
        image_pull_secrets=("regcred",),
        gpu_node_selector={"pool": "gpu"},
        gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        service_account="runner",
    )
    assert ClusterSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_a_field_left_out_takes_its_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("KUBETUNE_STEP_MEMORY", "3Gi")
    settings = ClusterSettings.from_dict({"image": "img:1"})
    assert settings.step_memory == "3Gi" and settings.secret == "kubetune-credentials"


def test_an_unknown_field_says_the_versions_differ():
    with pytest.raises(ValueError, match=r"unknown fields \['gpu_count'\].*compiled by another kubetune version"):
        ClusterSettings.from_dict({"image": "img:1", "gpu_count": 2})
