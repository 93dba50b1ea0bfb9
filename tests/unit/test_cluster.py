"""Runtime envs shipped to Ray workers: data roots and storage endpoints, never credentials."""

from __future__ import annotations

from laconic_ray.distributed.cluster import worker_env


def test_worker_env_forwards_endpoints_not_secrets(monkeypatch):
    monkeypatch.setenv("LACONIC_DATA", "/data")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.setenv(secret, "do-not-ship")
    env = worker_env()["env_vars"]
    assert env["LACONIC_DATA"] == "/data" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_REGION"] == "eu-west-1"
    assert "do-not-ship" not in env.values()


def test_hub_settings_travel_but_not_the_token(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    env = worker_env()["env_vars"]
    assert env["HF_ENDPOINT"] == "https://hf-mirror.example" and env["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in env
