"""app.properties: format, precedence, lookup order, and a clear exit-2 error for every bad input.

The error cases run the real ``conductor check`` command, because exit status and wording are
what an operator sees; the finer points run in-process against ``load_settings``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor import config
from conductor.config import ConfigError, Settings, load_settings
from support import CONDUCTOR, clean_env, clear_settings_env

REPO = Path(__file__).resolve().parents[2]
SETTING_KEYS = sorted(name.upper() for name in Settings.model_fields)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No conductor variable from the caller's environment, and a cwd without an app.properties."""
    clear_settings_env(monkeypatch)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def check(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``conductor check ARGS`` as an operator runs it, in ``cwd`` with ``env`` added."""
    return subprocess.run([CONDUCTOR, "check", *args], cwd=cwd, env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=60)


def effective(output: str) -> dict[str, str]:
    """KEY=VALUE lines of ``conductor check`` output."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line and not line.startswith("#"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.resolve()


VALID = "NODE_NAME=node-a\nTOTAL_CPUS=8\nTOTAL_MEMORY=16G\nWORKER_CONCURRENCY=2\n"


# --- every bad case of the issue: exit 2, file, line, key and reason -----------------------------

BAD_FILES = [
    pytest.param("WORKER_CONCURRENCY=four\n", 2, "WORKER_CONCURRENCY", "not a whole number",
                 id="concurrency-not-integer"),
    pytest.param("WORKER_CONCURRENCY=2.5\n", 2, "WORKER_CONCURRENCY", "not a whole number",
                 id="concurrency-fraction"),
    pytest.param("WORKER_CONCURRENCY=0\n", 2, "WORKER_CONCURRENCY", "greater than or equal to 1", id="concurrency-zero"),
    pytest.param("TOTAL_CPUS=-4\n", 2, "TOTAL_CPUS", "greater than or equal to 1", id="cpus-negative"),
    pytest.param("TOTAL_MEMORY=8X\n", 2, "TOTAL_MEMORY", "'8X' is not a size", id="memory-8X"),
    pytest.param("NODE_NAME=node a\n", 2, "NODE_NAME", "'node a' must be", id="node-name-space"),
    pytest.param("WORKER_CONCURENCY=4\n", 2, "WORKER_CONCURENCY", "unknown key; did you mean WORKER_CONCURRENCY?",
                 id="unknown-key"),
    pytest.param("API_HOST=0.0.0.0\n", 2, "API_HOST", "already set on line 1", id="duplicate-key"),
]


@pytest.mark.parametrize(("line2", "line", "key", "reason"), BAD_FILES)
def test_bad_value_exits_2_naming_file_line_key_and_reason(isolated, line2, line, key, reason):
    path = write(isolated / "conf" / "app.properties", f"API_HOST=127.0.0.1\n{line2}HEARTBEAT_INTERVAL=5\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:{line}: {key}" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_node_name_with_a_newline_from_the_environment_exits_2_naming_the_variable(isolated):
    path = write(isolated / "app.properties", VALID)
    result = check("--config", str(path), cwd=isolated, env={"NODE_NAME": "node\na"})
    assert result.returncode == 2
    assert "environment variable NODE_NAME" in result.stderr
    assert "must be 1-64 characters" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_environment_value_is_blamed_on_the_variable_not_the_file(isolated):
    path = write(isolated / "app.properties", VALID)
    result = check("--config", str(path), cwd=isolated, env={"TOTAL_CPUS": "many"})
    assert result.returncode == 2
    assert "environment variable TOTAL_CPUS: 'many' is not a whole number" in result.stderr
    assert str(path) not in result.stderr


def test_missing_file_named_by_config_exits_2_naming_it(isolated):
    missing = isolated / "nowhere" / "app.properties"
    result = check("--config", str(missing), cwd=isolated)
    assert result.returncode == 2
    assert f"{missing}: configuration file not found" in result.stderr


def test_missing_file_named_by_the_environment_variable_exits_2_naming_it(isolated):
    missing = isolated / "gone.properties"
    result = check(cwd=isolated, env={"CONDUCTOR_CONFIG": str(missing)})
    assert result.returncode == 2
    assert str(missing) in result.stderr and "CONDUCTOR_CONFIG" in result.stderr and "not found" in result.stderr


def test_heartbeat_ttl_not_above_interval_exits_2_naming_both_keys(isolated):
    path = write(isolated / "app.properties", "HEARTBEAT_INTERVAL=5\nHEARTBEAT_TTL=5\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert f"{path}:2: HEARTBEAT_TTL: must be greater than HEARTBEAT_INTERVAL (5)" in result.stderr


def test_heartbeat_ttl_error_names_the_line_of_heartbeat_ttl(isolated):
    path = write(isolated / "app.properties", "HEARTBEAT_INTERVAL=5\nNODE_NAME=a\nHEARTBEAT_TTL=4\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 2
    assert f"{path}:3: HEARTBEAT_TTL" in result.stderr


def test_heartbeat_ttl_from_environment_is_blamed_on_the_variable(isolated):
    path = write(isolated / "app.properties", "HEARTBEAT_INTERVAL=5\n")
    result = check("--config", str(path), cwd=isolated, env={"HEARTBEAT_TTL": "3"})
    assert result.returncode == 2
    assert "environment variable HEARTBEAT_TTL" in result.stderr


def test_absurdly_long_total_memory_exits_2_without_traceback(isolated):
    path = write(isolated / "app.properties", "TOTAL_MEMORY=" + "9" * 400 + "\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 2
    assert f"{path}:1: TOTAL_MEMORY" in result.stderr
    assert "Traceback" not in result.stderr


def test_concurrency_above_cpus_is_accepted_with_a_warning(isolated):
    path = write(isolated / "app.properties", "TOTAL_CPUS=2\nWORKER_CONCURRENCY=4\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 0, result.stderr
    assert effective(result.stdout)["WORKER_CONCURRENCY"] == "4"
    assert "warning" in result.stderr.lower()
    assert "WORKER_CONCURRENCY=4 exceeds TOTAL_CPUS=2" in result.stderr


def test_the_example_app_properties_passes_check(isolated):
    result = check("--config", str(REPO / "app.properties"), cwd=isolated)
    assert result.returncode == 0, result.stderr
    shown = effective(result.stdout)
    assert shown["NODE_NAME"] == "kunpeng-compute-01"
    assert shown["TOTAL_CPUS"] == "32"
    assert shown["WORKER_CONCURRENCY"] == "4"
    assert result.stdout.startswith(f"# configuration: {REPO / 'app.properties'}")


def test_check_prints_every_key_of_the_effective_configuration(isolated):
    path = write(isolated / "app.properties", VALID + "API_TOKEN=s3cret\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 0
    shown = effective(result.stdout)
    assert set(shown) == set(SETTING_KEYS)
    assert shown["TOTAL_MEMORY"] == "16G"
    assert shown["API_TOKEN"] == "********"
    assert "s3cret" not in result.stdout + result.stderr


def test_check_does_not_print_the_redis_password(isolated):
    path = write(isolated / "app.properties", VALID + "REDIS_URL=redis://:hunter2@127.0.0.1:6390/0\n")
    result = check("--config", str(path), cwd=isolated)
    assert result.returncode == 0
    assert "hunter2" not in result.stdout + result.stderr


# --- precedence and lookup order ---------------------------------------------------------------


def test_environment_beats_file_beats_default(isolated):
    path = write(isolated / "app.properties", "TOTAL_CPUS=4\nNODE_NAME=from-file\n")
    result = check("--config", str(path), cwd=isolated, env={"TOTAL_CPUS": "7"})
    shown = effective(result.stdout)
    assert shown["TOTAL_CPUS"] == "7"  # environment over file
    assert shown["NODE_NAME"] == "from-file"  # file over default
    assert shown["WORKER_CONCURRENCY"] == "1"  # default
    assert shown["HEARTBEAT_INTERVAL"] == "5.0" and shown["HEARTBEAT_TTL"] == "15.0"


def test_config_option_beats_environment_variable_beats_cwd_file(isolated):
    explicit = write(isolated / "a" / "app.properties", "NODE_NAME=explicit\n")
    from_env = write(isolated / "b" / "app.properties", "NODE_NAME=from-env\n")
    write(isolated / "app.properties", "NODE_NAME=from-cwd\n")
    env = {"CONDUCTOR_CONFIG": str(from_env)}
    assert effective(check("--config", str(explicit), cwd=isolated, env=env).stdout)["NODE_NAME"] == "explicit"
    assert effective(check(cwd=isolated, env=env).stdout)["NODE_NAME"] == "from-env"
    assert effective(check(cwd=isolated).stdout)["NODE_NAME"] == "from-cwd"


def test_cwd_file_beats_etc_file_and_etc_is_the_last_resort(isolated, monkeypatch, tmp_path):
    etc = write(tmp_path / "etc" / "conductor" / "app.properties", "NODE_NAME=from-etc\n")
    monkeypatch.setattr(config, "DEFAULT_LOCATIONS", (Path("app.properties"), etc))
    assert load_settings().node_name == "from-etc"
    assert load_settings().config_path == etc
    write(isolated / "app.properties", "NODE_NAME=from-cwd\n")
    assert load_settings().node_name == "from-cwd"
    assert load_settings().config_path == (isolated / "app.properties").resolve()


def test_lookup_order_is_config_env_cwd_then_etc():
    assert config.DEFAULT_LOCATIONS == (Path("app.properties"), Path("/etc/conductor/app.properties"))


@pytest.mark.skipif(Path("/etc/conductor/app.properties").exists(), reason="this host has a real /etc config")
def test_without_any_file_defaults_and_environment_apply(isolated):
    result = check(cwd=isolated, env={"NODE_NAME": "env-only"})
    assert result.returncode == 0, result.stderr
    assert "(no file: defaults and environment)" in result.stdout
    assert effective(result.stdout)["NODE_NAME"] == "env-only"


def test_defaults_follow_the_design_table(monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_LOCATIONS", ())
    loaded = load_settings()
    assert loaded.node_name == socket.gethostname()
    assert loaded.total_cpus == len(os.sched_getaffinity(0))
    assert loaded.total_memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert loaded.worker_concurrency == 1 and loaded.worker_burst is False
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"
    assert (loaded.heartbeat_interval, loaded.heartbeat_ttl) == (5, 15)
    assert loaded.log_level == "INFO" and loaded.log_file is None
    assert loaded.job_root == Path("/var/lib/conductor/jobs")
    assert loaded.api_enabled is False
    assert (loaded.api_host, loaded.api_port, loaded.api_token.get_secret_value()) == ("127.0.0.1", 8000, "")
    assert loaded.service_user == "conductor" and loaded.allow_root_jobs is False


# --- the file format -----------------------------------------------------------------------------


def test_comments_blank_lines_and_inline_comments(isolated):
    path = write(isolated / "app.properties", (
        "# a comment\n"
        "   # an indented comment\n"
        "\n"
        "   \n"
        "TOTAL_CPUS=6 # six cpus\n"
        "WORKER_CONCURRENCY=3\t# tab before the comment\n"
        "  NODE_NAME = spaced-out  \n"
        "LOG_FILE=\n"
    ))
    loaded = load_settings(path)
    assert (loaded.total_cpus, loaded.worker_concurrency, loaded.node_name) == (6, 3, "spaced-out")
    assert loaded.log_file is None


def test_a_hash_inside_a_value_is_kept(isolated):
    path = write(isolated / "app.properties", "REDIS_URL=redis://:pa#ss@127.0.0.1:6390/0 # shared Redis\n")
    assert load_settings(path).redis_url == "redis://:pa#ss@127.0.0.1:6390/0"


def test_windows_line_endings_are_accepted(isolated):
    path = isolated / "app.properties"
    path.write_bytes(b"TOTAL_CPUS=3\r\nNODE_NAME=crlf\r\n")
    loaded = load_settings(path)
    assert (loaded.total_cpus, loaded.node_name) == (3, "crlf")


def test_a_form_feed_inside_a_comment_does_not_start_a_new_line(isolated):
    path = write(isolated / "app.properties", "# old:\x0cWORKER_CONCURRENCY=64\nTOTAL_CPUS=8\n")
    assert load_settings(path).worker_concurrency == 1


@pytest.mark.parametrize(("text", "fragment"), [
    ("just words\n", "expected KEY=VALUE"),
    ("=5\n", "expected KEY=VALUE"),
    ("LOG_LEVEL=LOUD\n", "LOG_LEVEL"),
    ("REDIS_URL=http://127.0.0.1/\n", "must start with redis://"),
    ("API_PORT=70000\n", "API_PORT"),
    ("JOB_ROOT=relative/jobs\n", "must be an absolute path"),
    ("SERVICE_USER=Bad User\n", "not a valid user name"),
    ("WORKER_BURST=maybe\n", "WORKER_BURST"),
    ("HEARTBEAT_INTERVAL=0\n", "HEARTBEAT_INTERVAL"),
    ("node_name=lower\n", "did you mean NODE_NAME"),
])
def test_other_bad_lines_raise_config_error_naming_file_and_line(isolated, text, fragment):
    path = write(isolated / "app.properties", f"NODE_NAME=ok\n{text}")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert f"{path}:2:" in str(caught.value)
    assert fragment in str(caught.value)


def test_an_unreadable_file_is_a_config_error(isolated):
    path = isolated / "app.properties"
    path.write_bytes(b"NODE_NAME=\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(path)


def test_a_directory_named_by_config_is_a_config_error(isolated):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(isolated)


# --- fuzzing: any file either loads or is a ConfigError, and nothing is written ------------------

_VALUES = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"-?\d{1,20}(\.\d{1,3})?[KMGTPXkmg]?(i?B)?", fullmatch=True),
    st.sampled_from(["", "true", "false", "0", "-1", "nan", "inf", "redis://h:1/0", "/abs", "rel", "#", " # c"]),
)
_LINES = st.one_of(
    st.builds("{}={}{}".format, st.sampled_from(SETTING_KEYS + ["WORKER_CONCURENCY", "node_name", "X"]),
              _VALUES, st.sampled_from(["", " # note", "#tail", "\t# tab"])),
    st.text(max_size=40),
)
_FILES = st.one_of(
    st.lists(_LINES, max_size=10).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
)


@pytest.mark.reliability("bad input: random app.properties files", cases=300)
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_FILES)
def test_any_file_loads_or_raises_config_error_and_writes_nothing(isolated, tmp_path, content):
    path = tmp_path / "fuzz" / "app.properties"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    before = sorted(p for p in tmp_path.rglob("*"))
    try:
        loaded = load_settings(path)
    except ConfigError as error:
        assert str(error)
    else:
        assert isinstance(loaded, Settings)
        assert loaded.heartbeat_ttl > loaded.heartbeat_interval
        assert loaded.worker_concurrency >= 1 and loaded.total_cpus >= 1
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert path.read_bytes() == content


@pytest.mark.parametrize(("text", "fragment"), [
    ("JOB_ROOT=/var/lib\n", "'/var/lib' is a system directory"),
    ("JOB_ROOT=/tmp/\n", "'/tmp' is a system directory"),
    ("JOB_ROOT=/usr/local/jobs\n", "is a system directory"),
    ("LOG_FILE=/dev/shm/workers.log\n", "'/dev/shm' is a system directory"),
    ("LOG_FILE=workers.log\n", "must be an absolute path"),
])
def test_system_directories_are_refused_for_what_the_service_user_owns(isolated, text, fragment):
    """JOB_ROOT and LOG_FILE's directory become the service user's: one rule, here, for every caller."""
    path = write(isolated / "app.properties", f"NODE_NAME=ok\n{text}")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert f"{path}:2:" in str(caught.value) and fragment in str(caught.value)


def test_a_root_service_user_needs_allow_root_jobs(isolated):
    path = write(isolated / "app.properties", "SERVICE_USER=root\n")
    with pytest.raises(ConfigError, match="SERVICE_USER=root: services, and so jobs, never run as root"):
        load_settings(path)
    write(path, "SERVICE_USER=root\nALLOW_ROOT_JOBS=true\n")
    assert load_settings(path).service_user == "root"


def test_blocked_names_the_first_directory_a_user_cannot_pass():
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp())  # in /tmp, which anyone may pass (pytest's tmp_path is in a 0700 one)
    try:
        check_blocked(base)
    finally:
        shutil.rmtree(base)


def check_blocked(tmp_path: Path) -> None:
    from conductor.hostops import Account, blocked

    outer = tmp_path / "home"
    inner = outer / "clone" / ".venv"
    inner.mkdir(parents=True)
    outer.chmod(0o700)
    tmp_path.chmod(0o755)
    stranger = Account("nobody-here", None, frozenset())
    owner = Account("me", outer.stat().st_uid, frozenset())
    assert blocked(inner / "bin" / "conductor", stranger) == outer
    assert blocked(inner / "bin" / "conductor", owner if owner.uid != 0 else Account("me", 0, frozenset())) is None
    outer.chmod(0o701)  # passing through is enough; listing is not needed
    assert blocked(inner / "bin" / "conductor", stranger) is None
