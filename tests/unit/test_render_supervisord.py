"""`conductor render supervisord`: golden bytes, one program per worker, atomic and idempotent writes.

Golden files live in tests/golden/. The config path in the rendered text is the only part that
depends on where the test runs, so it is replaced by /etc/conductor/app.properties (the path a
deployment uses) before comparing. After an intended change of the template, regenerate them with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render_supervisord.py`` and review the diff.
"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from conductor import config, render
from conductor.config import Settings, load_settings
from support import CONDUCTOR, clean_env, clear_settings_env, write_config

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FIXED_CONFIG = "/etc/conductor/app.properties"
GOLDEN_CASES = {
    "supervisord-4-workers.conf": {
        "NODE_NAME": "kunpeng-compute-01", "TOTAL_CPUS": 32, "TOTAL_MEMORY": "64G", "WORKER_CONCURRENCY": 4,
        "INSTALL_PREFIX": "/opt/conductor", "SERVICE_USER": "conductor", "WORKER_STOP_TIMEOUT": 3600,
        "API_ENABLED": False,
    },
    "supervisord-2-workers-api.conf": {
        "NODE_NAME": "node-b", "TOTAL_CPUS": 8, "TOTAL_MEMORY": "16G", "WORKER_CONCURRENCY": 2,
        "INSTALL_PREFIX": "/srv/conductor-env", "SERVICE_USER": "batch", "WORKER_STOP_TIMEOUT": 600,
        "API_ENABLED": True, "API_PORT": 8080,
    },
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    clear_settings_env(monkeypatch)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def settings_for(directory: Path, **values: object) -> Settings:
    base: dict[str, object] = {"NODE_NAME": "node-a", "TOTAL_CPUS": 8, "TOTAL_MEMORY": "16G",
                               "WORKER_CONCURRENCY": 2, "INSTALL_PREFIX": "/opt/conductor"}
    base.update(values)
    directory.mkdir(parents=True, exist_ok=True)
    return load_settings(write_config(directory / "app.properties", **base))


def rendered(settings: Settings) -> str:
    files = dict(render.Supervisord(settings).files())
    assert list(files) == ["conductor.conf"]
    return files["conductor.conf"]


def sections(text: str) -> dict[str, str]:
    """Section name -> its exact text (from its header line up to the next header)."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            current = line.strip()[1:-1]
            found[current] = ""
        if current is not None:
            found[current] += line
    return {name: body.rstrip("\n") for name, body in found.items()}


def parsed(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
    parser.read_string(text)
    return parser


def render_cli(config_path: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONDUCTOR, "render", "supervisord", "--config", str(config_path), "--out", str(out)],
                          cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60)


# --- golden files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_render_matches_the_golden_file(tmp_path, golden):
    (tmp_path / "conf").mkdir()
    config_path = write_config(tmp_path / "conf" / "app.properties", **GOLDEN_CASES[golden])
    out = tmp_path / "out"
    result = render_cli(config_path, out, tmp_path)
    assert result.returncode == 0, result.stderr
    text = (out / "conductor.conf").read_text().replace(str(config_path.resolve()), FIXED_CONFIG)
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / golden).write_text(text)
    assert text == (GOLDEN / golden).read_text()


def test_golden_files_follow_the_contract():
    """The goldens themselves: guards against regenerating a wrong file by accident."""
    four = parsed((GOLDEN / "supervisord-4-workers.conf").read_text())
    assert four.sections() == [f"program:conductor-worker-{i}" for i in range(1, 5)]
    two = parsed((GOLDEN / "supervisord-2-workers-api.conf").read_text())
    assert two.sections() == ["program:conductor-worker-1", "program:conductor-worker-2", "program:conductor-api"]
    assert two["program:conductor-worker-2"]["command"] == \
        f"/srv/conductor-env/bin/conductor worker --index 2 --config {FIXED_CONFIG}"
    assert two["program:conductor-api"]["command"] == f"/srv/conductor-env/bin/conductor api --config {FIXED_CONFIG}"


def test_same_input_gives_the_same_bytes(tmp_path):
    settings = settings_for(tmp_path / "conf", WORKER_CONCURRENCY=3, API_ENABLED=True)
    first = rendered(settings)
    assert rendered(settings) == first
    assert rendered(settings_for(tmp_path / "conf", WORKER_CONCURRENCY=3, API_ENABLED=True)) == first


def test_same_input_gives_the_same_bytes_from_separate_processes(tmp_path):
    config_path = write_config(tmp_path / "app.properties", NODE_NAME="n", WORKER_CONCURRENCY=3,
                               INSTALL_PREFIX="/opt/c")
    for out in ("one", "two"):
        assert render_cli(config_path, tmp_path / out, tmp_path).returncode == 0
    assert (tmp_path / "one" / "conductor.conf").read_bytes() == (tmp_path / "two" / "conductor.conf").read_bytes()


# --- structure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 5, 16])
def test_one_program_per_worker_and_no_group_or_numprocs(tmp_path, count):
    text = rendered(settings_for(tmp_path, WORKER_CONCURRENCY=count))
    parser = parsed(text)
    assert parser.sections() == [f"program:conductor-worker-{i}" for i in range(1, count + 1)]
    settings_lines = [line for line in text.splitlines() if not line.lstrip().startswith((";", "#"))]
    assert not any(line.startswith("[group:") for line in settings_lines)
    assert not any("numprocs" in line for line in settings_lines)
    assert "[supervisord]" not in settings_lines  # an include file for conf.d: programs only
    for i in range(1, count + 1):
        program = parser[f"program:conductor-worker-{i}"]
        assert program["command"] == \
            f"/opt/conductor/bin/conductor worker --index {i} --config {(tmp_path / 'app.properties').resolve()}"


def test_worker_programs_are_identical_whatever_the_count(tmp_path):
    """So that `supervisorctl update` after raising N from 4 to 5 leaves workers 1-4 alone."""
    four = sections(rendered(settings_for(tmp_path, WORKER_CONCURRENCY=4)))
    five = sections(rendered(settings_for(tmp_path, WORKER_CONCURRENCY=5)))
    for i in range(1, 5):
        name = f"program:conductor-worker-{i}"
        assert four[name] == five[name]
    assert set(five) - set(four) == {"program:conductor-worker-5"}


def test_worker_programs_restart_themselves_and_wait_for_the_current_job(tmp_path):
    parser = parsed(rendered(settings_for(tmp_path, WORKER_CONCURRENCY=3, WORKER_STOP_TIMEOUT=1234,
                                          SERVICE_USER="batch")))
    for i in (1, 2, 3):
        program = parser[f"program:conductor-worker-{i}"]
        assert program["autorestart"] == "true"
        assert program["stopwaitsecs"] == "1234"
        assert program.get("stopsignal", "TERM") == "TERM"
        assert program["user"] == "batch"
        assert program.get("autostart", "true") == "true"


def test_stop_wait_follows_the_default_worker_stop_timeout(tmp_path):
    settings = settings_for(tmp_path)
    parser = parsed(rendered(settings))
    assert parser["program:conductor-worker-1"]["stopwaitsecs"] == str(settings.worker_stop_timeout)
    assert int(parser["program:conductor-worker-1"]["stopwaitsecs"]) > 10  # not RQ's recipe's 10 s


def test_api_program_only_when_the_api_is_enabled(tmp_path):
    without = parsed(rendered(settings_for(tmp_path / "a", API_ENABLED=False)))
    assert "program:conductor-api" not in without.sections()
    settings = settings_for(tmp_path / "b", API_ENABLED=True)
    with_api = parsed(rendered(settings))
    assert with_api.sections()[-1] == "program:conductor-api"
    assert with_api["program:conductor-api"]["command"] == \
        f"/opt/conductor/bin/conductor api --config {settings.config_path}"
    assert with_api["program:conductor-api"]["autorestart"] == "true"
    assert [s for s in with_api.sections() if s != "program:conductor-api"] == without.sections()


def test_without_a_file_the_programs_read_the_etc_config(monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_LOCATIONS", ())
    monkeypatch.setenv("INSTALL_PREFIX", "/opt/conductor")
    parser = parsed(rendered(load_settings()))
    assert parser["program:conductor-worker-1"]["command"].endswith("--config /etc/conductor/app.properties")


# supervisord refuses a program whose user= does not exist on the machine; a fresh test machine
# has no `conductor` user yet, so its own parser is given one that every Debian system has.
EXISTING_USER = "nobody"


def supervisor_programs(conf_d_file: Path, directory: Path) -> dict[str, object]:
    """What supervisord itself makes of the rendered file (its own config parser, nothing started)."""
    from supervisor.options import ServerOptions

    main = directory / "supervisord.conf"
    main.write_text(f"[supervisord]\nlogfile={directory}/supervisord.log\npidfile={directory}/s.pid\n\n"
                    f"[include]\nfiles = {conf_d_file}\n")
    options = ServerOptions()
    try:
        options.realize(args=["-c", str(main)])
    except SystemExit as error:  # supervisor reports a config error by printing usage and exiting
        raise AssertionError(f"supervisord rejects the rendered file (exit {error.code})") from None
    return {p.name: p for group in options.process_group_configs for p in group.process_configs}


def test_supervisord_accepts_the_file_with_the_intended_commands(tmp_path):
    settings = settings_for(tmp_path / "conf", WORKER_CONCURRENCY=3, API_ENABLED=True, WORKER_STOP_TIMEOUT=77,
                            SERVICE_USER=EXISTING_USER)
    out = tmp_path / "out"
    render.write(render.Supervisord(settings).files(), out)
    programs = supervisor_programs(out / "conductor.conf", tmp_path)
    assert sorted(programs) == ["conductor-api", "conductor-worker-1", "conductor-worker-2", "conductor-worker-3"]
    for i in (1, 2, 3):
        program = programs[f"conductor-worker-{i}"]
        assert shlex.split(program.command) == [
            "/opt/conductor/bin/conductor", "worker", "--index", str(i), "--config", str(settings.config_path)]
        assert program.stopwaitsecs == 77
        assert program.autorestart.__name__ == "RestartUnconditionally"


@pytest.mark.parametrize("folder", ["my configs", "100%"])
def test_supervisord_gets_the_right_argv_for_a_config_path_with_a_space_or_percent(tmp_path, folder):
    settings = settings_for(tmp_path / folder, WORKER_CONCURRENCY=1, SERVICE_USER=EXISTING_USER)
    out = tmp_path / "out"
    render.write(render.Supervisord(settings).files(), out)
    program = supervisor_programs(out / "conductor.conf", tmp_path)["conductor-worker-1"]
    assert shlex.split(program.command)[-2:] == ["--config", str(settings.config_path)]


# --- writing: atomic, idempotent, nothing half-written ----------------------------------------------


def test_cli_reports_wrote_then_unchanged_and_keeps_the_file_untouched(tmp_path):
    config_path = write_config(tmp_path / "app.properties", NODE_NAME="n", WORKER_CONCURRENCY=2,
                               INSTALL_PREFIX="/opt/c")
    out = tmp_path / "rendered"
    first = render_cli(config_path, out, tmp_path)
    target = out / "conductor.conf"
    assert first.returncode == 0
    assert first.stdout.splitlines() == [f"wrote {target}"]
    old = target.stat()
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))  # so a rewrite could not keep the mtime
    before = target.stat()

    second = render_cli(config_path, out, tmp_path)
    assert second.returncode == 0
    assert second.stdout.splitlines() == [f"unchanged {target}"]
    after = target.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert sorted(p.name for p in out.iterdir()) == ["conductor.conf"]


def test_cli_rewrites_when_the_config_changes(tmp_path):
    config_path = write_config(tmp_path / "app.properties", NODE_NAME="n", WORKER_CONCURRENCY=2)
    out = tmp_path / "rendered"
    assert render_cli(config_path, out, tmp_path).returncode == 0
    write_config(config_path, NODE_NAME="n", WORKER_CONCURRENCY=3)
    result = render_cli(config_path, out, tmp_path)
    assert result.stdout.splitlines() == [f"wrote {out / 'conductor.conf'}"]
    assert "[program:conductor-worker-3]" in (out / "conductor.conf").read_text()
    assert oct((out / "conductor.conf").stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in out.iterdir()) == ["conductor.conf"]


def test_a_config_found_in_the_cwd_is_written_as_an_absolute_path(isolated):
    """supervisord starts programs from /, so a relative --config would not find the file."""
    write_config(isolated / "app.properties", NODE_NAME="n", INSTALL_PREFIX="/opt/c")
    result = subprocess.run([CONDUCTOR, "render", "supervisord", "--out", "out"], cwd=isolated, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = parsed((isolated / "out" / "conductor.conf").read_text())["program:conductor-worker-1"]["command"]
    assert command == f"/opt/c/bin/conductor worker --index 1 --config {(isolated / 'app.properties').resolve()}"


def test_cli_renders_into_the_current_directory_by_default(tmp_path, isolated):
    config_path = write_config(tmp_path / "app.properties", NODE_NAME="n")
    result = subprocess.run([CONDUCTOR, "render", "supervisord", "--config", str(config_path)], cwd=isolated,
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert (isolated / "conductor.conf").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_a_bad_config_writes_nothing_and_exits_2(tmp_path, existing):
    out = tmp_path / "rendered"
    if existing:
        out.mkdir()
        (out / "conductor.conf").write_text("; the previous, good file\n")
    config_path = write_config(tmp_path / "app.properties", NODE_NAME="n", WORKER_CONCURRENCY=0)
    result = render_cli(config_path, out, tmp_path)
    assert result.returncode == 2
    assert f"{config_path}:2: WORKER_CONCURRENCY" in result.stderr
    assert result.stdout == ""
    if existing:
        assert [p.name for p in out.iterdir()] == ["conductor.conf"]
        assert (out / "conductor.conf").read_text() == "; the previous, good file\n"
    else:
        assert not out.exists() or not any(out.iterdir())


def test_write_is_atomic_for_a_concurrent_reader(tmp_path):
    """A reader (supervisord rereading) sees the old file or the new one, never a part of one."""
    small = rendered(settings_for(tmp_path / "a", WORKER_CONCURRENCY=1))
    large = rendered(settings_for(tmp_path / "b", WORKER_CONCURRENCY=64))
    out = tmp_path / "out"
    render.write(iter([("conductor.conf", small)]), out)
    target = out / "conductor.conf"
    seen: set[str] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(target.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(200):
            render.write(iter([("conductor.conf", large if round_ % 2 == 0 else small)]), out)
    finally:
        done.set()
        thread.join()
    assert seen <= {small, large}
    assert sorted(p.name for p in out.iterdir()) == ["conductor.conf"]  # no temporary file left over


def test_write_returns_each_path_and_whether_it_changed(tmp_path):
    out = tmp_path / "deep" / "er"
    assert render.write(iter([("a.conf", "x\n"), ("b.conf", "y\n")]), out) == [
        (out / "a.conf", True), (out / "b.conf", True)]
    assert render.write(iter([("a.conf", "x\n"), ("b.conf", "z\n")]), out) == [
        (out / "a.conf", False), (out / "b.conf", True)]
    assert (out / "b.conf").read_text() == "z\n"
