"""Redis Sentinel settings: validated like every other key (file, line, key, reason), secrets
masked, and the one connection function turning them into a sentinel-managed client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conductor import config
from conductor.config import ConfigError, Settings, load_settings
from conductor.store import connect, sentinel_managed
from support import CONDUCTOR, clean_env

SENTINELS = "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.upper() in {name.upper() for name in Settings.model_fields} or key == config.ENV_CONFIG:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def properties(directory: Path, text: str) -> Path:
    path = directory / "app.properties"
    path.write_text("NODE_NAME=node-a\n" + text)
    return path


def test_sentinels_and_master_name_give_the_addresses(isolated):
    settings = load_settings(properties(isolated, f"REDIS_SENTINELS={SENTINELS}\nREDIS_SENTINEL_MASTER=conductor\n"))
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)]


def test_redis_url_alone_keeps_working_without_sentinels(isolated):
    settings = load_settings(properties(isolated, "REDIS_URL=redis://127.0.0.1:6390/2\n"))
    assert settings.sentinel_addresses == []
    assert not sentinel_managed(connect(settings))


@pytest.mark.parametrize(("text", "line", "fragment"), [
    (f"REDIS_SENTINELS={SENTINELS}\n", None, "REDIS_SENTINEL_MASTER: must name the primary"),
    ("REDIS_SENTINEL_MASTER=conductor\n", 2, "needs REDIS_SENTINELS"),
    ("REDIS_SENTINELS=10.0.0.1\nREDIS_SENTINEL_MASTER=conductor\n", 2, "'10.0.0.1' is not host:port"),
    ("REDIS_SENTINELS=10.0.0.1:99999\nREDIS_SENTINEL_MASTER=conductor\n", 2, "is not host:port"),
    (f"REDIS_SENTINELS={SENTINELS}\nREDIS_SENTINEL_MASTER=bad name\n", 3, "must be characters"),
    (f"REDIS_URL=unix:///run/redis.sock\nREDIS_SENTINELS={SENTINELS}\nREDIS_SENTINEL_MASTER=conductor\n", 4,
     "cannot be used with a unix:// REDIS_URL"),
])
def test_bad_sentinel_settings_name_file_line_key_and_reason(isolated, text, line, fragment):
    path = properties(isolated, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert fragment in str(caught.value)
    if line is not None:
        assert f"{path.resolve()}:{line}:" in str(caught.value)


def test_check_masks_the_sentinel_password_and_redis_password(isolated):
    import subprocess

    path = properties(isolated, f"REDIS_URL=redis://:hunter2@127.0.0.1:6379/0\nREDIS_SENTINELS={SENTINELS}\n"
                                "REDIS_SENTINEL_MASTER=conductor\nREDIS_SENTINEL_PASSWORD=s3cret\n")
    result = subprocess.run([CONDUCTOR, "check", "--config", str(path)], capture_output=True, text=True,
                            env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "s3cret" not in result.stdout
    assert "REDIS_SENTINEL_PASSWORD=********" in result.stdout
    assert f"REDIS_SENTINELS={SENTINELS}" in result.stdout


def test_the_one_connection_function_follows_the_sentinels_with_the_urls_credentials(isolated):
    settings = load_settings(properties(isolated, f"REDIS_URL=redis://app:pw@ignored:6379/3\n"
                                                  f"REDIS_SENTINELS={SENTINELS}\nREDIS_SENTINEL_MASTER=conductor\n"))
    client = connect(settings)
    assert sentinel_managed(client)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "pw")
    assert client.connection_pool.service_name == "conductor"
    sentinel_kwargs = client.connection_pool.sentinel_manager.sentinel_kwargs
    assert sentinel_kwargs["password"] == "pw"  # no REDIS_SENTINEL_PASSWORD: the URL's is reused
