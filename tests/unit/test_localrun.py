"""make run's node configuration (conductor/localrun.py): pure text logic, checked on real files."""

from __future__ import annotations

import os
import stat

from conductor.config import load_settings
from conductor.localrun import job_user, node_config, password, redis_conf, with_password, write_private


def test_the_node_configuration_replaces_redis_url_adds_defaults_and_keeps_the_rest(tmp_path):
    source = tmp_path / "app.properties"
    source.write_text("# a comment\nNODE_NAME=n1\nREDIS_URL=redis://127.0.0.1:6390/0  # local\n#JOB_USER=x\n")
    text = node_config(source, {"REDIS_URL": "redis://:pw@127.0.0.1:6390/0"}, {"JOB_USER": "conductor-job"})
    node = tmp_path / "node.properties"
    node.write_text(text)
    settings = load_settings(node)  # one REDIS_URL only: a key set twice is an error
    assert settings.redis_url == "redis://:pw@127.0.0.1:6390/0" and settings.job_user == "conductor-job"
    assert "# a comment\nNODE_NAME=n1\n" in text and "#JOB_USER=x" in text


def test_a_job_user_named_by_the_user_is_kept(tmp_path):
    source = tmp_path / "app.properties"
    source.write_text("JOB_USER=batchjobs\n")
    assert node_config(source, {}, {"JOB_USER": "conductor-job"}) == "JOB_USER=batchjobs\n"


def test_the_password_is_generated_once_into_a_file_only_its_owner_reads(tmp_path):
    first = password(tmp_path)
    assert len(first) >= 32 and password(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "redis-password").stat().st_mode) == 0o600
    assert with_password("redis://127.0.0.1:6379/0", first) == f"redis://:{first}@127.0.0.1:6379/0"


def test_private_files_are_never_created_readable_by_others(tmp_path):
    old = os.umask(0)
    try:
        write_private(tmp_path / "redis.conf", redis_conf(6379, tmp_path, 'p"w\\'), "root", 0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "redis.conf").stat().st_mode) == 0o640
    assert 'requirepass "p\\"w\\\\"' in (tmp_path / "redis.conf").read_text()


def test_job_user_is_conductor_job_for_root_and_emptied_for_another_caller():
    """A user's `make run` cannot create or switch to JOB_USER: the example file's conductor-job
    would make every worker refuse to start, so the node's copy empties it."""
    assert job_user("", as_root=True, in_environment=False) == ({}, {"JOB_USER": "conductor-job"})
    assert job_user("batch", as_root=True, in_environment=False) == ({}, {"JOB_USER": "conductor-job"})
    assert job_user("", as_root=True, in_environment=True) == ({}, {})
    assert job_user("conductor-job", as_root=False, in_environment=False) == ({"JOB_USER": ""}, {})
    assert job_user("", as_root=False, in_environment=False) == ({}, {})
