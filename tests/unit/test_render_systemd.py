"""`conductor render systemd`: the files, their contract directives, and systemd's own verdict on them.

systemd's tools check the rendered files here without systemd running as PID 1:
``systemd-analyze verify`` loads them as systemd would, and ``systemd-analyze security
--offline=true --threshold=20`` gates the sandbox at an exposure of 2.0. Both come from Debian's
``systemd`` package; these tests fail (never skip) when it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BIN, conductor, write_config

THRESHOLD = 2.0  # the target for `systemd-analyze security`
WORKER = "conductor-worker@.service"
TARGET = "conductor-workers.target"
API = "conductor-api.service"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package (apt-get install systemd); "
                    "it runs here without systemd as PID 1")
    return path


def settings(directory: Path, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "NODE_NAME": "kunpeng-compute-01",
        "TOTAL_CPUS": 32,
        "TOTAL_MEMORY": "64G",
        "WORKER_CONCURRENCY": 4,
        "REDIS_URL": "redis://127.0.0.1:6399/0",
        "JOB_ROOT": "/var/lib/conductor/jobs",
        "SERVICE_USER": "conductor",
        "WORKER_STOP_TIMEOUT": 3600,
        # A real `conductor` for ExecStart: verify checks that the binary exists.
        "INSTALL_PREFIX": BIN.parent,
    }
    values.update(overrides)
    return values


def render(tmp_path: Path, name: str = "out", **overrides: object) -> tuple[Path, Path, str]:
    """Render with the real CLI; returns (output directory, config path, CLI output)."""
    config = write_config(tmp_path / f"{name}.properties", **settings(tmp_path, **overrides))
    out = tmp_path / name
    result = conductor("render", "systemd", "--out", str(out), config=config)
    return out, config.resolve(), result.stdout


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of a key in order (comments ignored)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze(), "verify", *map(str, paths)], check=False, capture_output=True, text=True, timeout=120)


def exposure(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """systemd's offline security verdict on ``unit``: (overall exposure, the completed run)."""
    result = subprocess.run(
        [analyze(), "security", "--offline=true", f"--threshold={int(THRESHOLD * 10)}", "--no-pager", str(unit)],
        check=False, capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure figure in systemd-analyze's output:\n{result.stdout}{result.stderr}"
    return float(match.group(1)), result


def test_writes_the_three_files_and_says_so(tmp_path):
    out, _, printed = render(tmp_path, API_ENABLED=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([WORKER, TARGET, API])
    assert printed.splitlines() == [f"wrote {out / name}" for name in (WORKER, TARGET, API)]


def test_worker_template_carries_the_contract_directives(tmp_path):
    out, config, _ = render(tmp_path, WORKER_STOP_TIMEOUT=900, SERVICE_USER="batch")
    unit = directives((out / WORKER).read_text())
    assert unit["ExecStart"] == [f"{BIN / 'conductor'} worker --index %i --config {config}"]
    assert unit["Restart"] == ["always"]
    assert 0 < float(unit["RestartSec"][0]) <= 2
    assert int(unit["StartLimitBurst"][0]) >= 3 and int(unit["StartLimitIntervalSec"][0]) > 0
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["TimeoutStopSec"] == ["900"]
    assert "ExecReload" not in unit
    assert unit["SyslogIdentifier"] == ["conductor-worker-%i"]
    assert unit["PartOf"] == [TARGET]
    assert unit["User"] == ["batch"] and unit["Group"] == ["batch"]
    assert unit["WantedBy"] == [TARGET]


def test_sandbox_directives_keep_jobs_working(tmp_path):
    out, _, _ = render(tmp_path, JOB_ROOT="/srv/jobs", LOG_FILE="/var/log/conductor/workers.log")
    unit = directives((out / WORKER).read_text())
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "no", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    assert {key: unit[key][0] for key in expected} == expected
    # Writable: the job directories and the log's directory, and the cgroup tree where systemd
    # delegates the unit's own subtree (job containment); nothing else.
    assert unit["ReadWritePaths"] == ["/sys/fs/cgroup", "/srv/jobs /var/log/conductor"]
    assert unit["Delegate"] == ["cpu cpuset memory pids"]
    # Jobs bind themselves to CPUs with sched_setaffinity, in @system-service's @resources: not filtered.
    assert "@resources" not in " ".join(unit["SystemCallFilter"])
    assert "MemoryDenyWriteExecute" not in unit  # JIT runtimes in job scripts need W+X memory


def test_log_file_below_job_root_adds_no_second_path(tmp_path):
    out, _, _ = render(tmp_path, JOB_ROOT="/srv/conductor", LOG_FILE="/srv/conductor/log/workers.log")
    assert directives((out / WORKER).read_text())["ReadWritePaths"] == ["/sys/fs/cgroup", "/srv/conductor"]


def test_target_wants_instances_one_to_n(tmp_path):
    out, _, _ = render(tmp_path, WORKER_CONCURRENCY=3)
    target = directives((out / TARGET).read_text())
    assert target["Wants"] == [f"conductor-worker@{i}.service" for i in (1, 2, 3)]
    assert target["WantedBy"] == ["multi-user.target"]


def test_instance_unit_does_not_depend_on_concurrency(tmp_path):
    """So raising or lowering N never changes the definition of the running instances."""
    config = tmp_path / "app.properties"
    rendered = {}
    for concurrency in (2, 7):
        write_config(config, **settings(tmp_path, WORKER_CONCURRENCY=concurrency))
        out = tmp_path / f"n{concurrency}"
        conductor("render", "systemd", "--out", str(out), config=config)
        rendered[concurrency] = {name: (out / name).read_bytes() for name in (WORKER, TARGET)}
    assert rendered[2][WORKER] == rendered[7][WORKER]
    assert rendered[2][TARGET] != rendered[7][TARGET]


def test_output_is_deterministic_and_unchanged_files_are_left_alone(tmp_path):
    out, config, _ = render(tmp_path, API_ENABLED=True)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()}
    again = conductor("render", "systemd", "--out", str(out), config=config).stdout
    assert again.splitlines() == [f"unchanged {out / name}" for name in (WORKER, TARGET, API)]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no leftovers of the atomic write


def test_api_unit_only_when_enabled_and_hardened(tmp_path):
    out, config, _ = render(tmp_path, "off")
    assert not (out / API).exists()
    out, config, _ = render(tmp_path, "on", API_ENABLED=True, API_PORT=8080)
    api = directives((out / API).read_text())
    assert api["ExecStart"] == [f"{BIN / 'conductor'} api --config {config}"]
    assert api["User"] == ["conductor"] and api["CapabilityBoundingSet"] == [""]
    assert api["MemoryDenyWriteExecute"] == ["yes"] and api["PrivateUsers"] == ["yes"]


def test_api_on_a_privileged_port_gets_only_that_capability(tmp_path):
    out, _, _ = render(tmp_path, API_ENABLED=True, API_PORT=443)
    api = directives((out / API).read_text())
    assert api["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert api["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "PrivateUsers" not in api  # a user namespace would void the capability for the host's network
    assert verify(out / API).returncode == 0


def test_burst_workers_are_not_restarted_after_a_clean_exit(tmp_path):
    out, _, _ = render(tmp_path, WORKER_BURST=True)
    assert directives((out / WORKER).read_text())["Restart"] == ["on-failure"]


def test_systemd_analyze_verify_finds_nothing(tmp_path):
    out, _, _ = render(tmp_path, API_ENABLED=True, LOG_FILE="/var/log/conductor/workers.log")
    # The target pulls in instances of the template from the same directory.
    result = verify(out / TARGET, out / "conductor-worker@1.service", out / "conductor-worker@12.service",
                    out / API)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_notices_a_broken_unit(tmp_path):
    """The check above can fail: a unit whose ExecStart does not exist is reported."""
    out, _, _ = render(tmp_path, INSTALL_PREFIX="/nonexistent/prefix")
    result = verify(out / "conductor-worker@1.service")
    assert result.returncode != 0 and "/nonexistent/prefix/bin/conductor" in result.stdout + result.stderr


def test_odd_paths_are_escaped_for_systemd(tmp_path):
    prefix = tmp_path / "pre fix%i"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin/conductor").symlink_to(BIN / "conductor")
    out, _, _ = render(tmp_path, INSTALL_PREFIX=prefix, JOB_ROOT="/srv/my jobs/50%$HOME")
    unit = directives((out / WORKER).read_text())
    assert unit["ExecStart"][0].startswith(f'"{str(prefix).replace("%", "%%")}/bin/conductor" worker --index %i')
    assert unit["ReadWritePaths"] == ["/sys/fs/cgroup", '"/srv/my jobs/50%%$HOME"']
    result = verify(out / "conductor-worker@1.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", ["conductor-worker@1.service", API])
def test_security_exposure_is_at_most_two(tmp_path, unit):
    out, _, _ = render(tmp_path, API_ENABLED=True, LOG_FILE="/var/log/conductor/workers.log")
    source = out / (WORKER if unit.startswith("conductor-worker@") else unit)
    if source.name != unit:
        shutil.copy(source, out / unit)  # --offline reads the file given; name it as the instance
    figure, result = exposure(out / unit)
    print(f"systemd-analyze security --offline=true {unit}: exposure {figure}")
    assert figure <= THRESHOLD, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_security_gate_fails_an_unhardened_unit(tmp_path):
    """The gate can fail: without its sandbox the same worker unit scores far above 2.0."""
    out, _, _ = render(tmp_path)
    text = (out / WORKER).read_text().split("# Sandbox")[0] + "\n[Install]\nWantedBy=conductor-workers.target\n"
    bare = out / "conductor-worker@1.service"
    bare.write_text(text)
    figure, result = exposure(bare)
    assert figure > THRESHOLD and result.returncode != 0
