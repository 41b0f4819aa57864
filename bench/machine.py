"""The machine and the versions a run was taken on: ratios mean little without them."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from .infra import BIN, REPO


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return f"{int(match.group(1)) / (1 << 20):.1f} GiB" if match else "unknown"


def _command_version(command: list[str], pattern: str) -> str:
    try:
        output = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "not installed"
    match = re.search(pattern, output)
    return match.group(1) if match else output.strip() or "unknown"


def _git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" (with uncommitted changes)" if git("status", "--porcelain", "--", "conductor") else "")


def describe() -> dict[str, str]:
    """Name -> value, in the order the report prints them."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} usable ({os.cpu_count()} online)",
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "rq": version("rq"),
        "redis-py": version("redis"),
        "redis-server": _command_version(["redis-server", "--version"], r"v=(\S+)"),
        "supervisor": _command_version([str(BIN / "supervisord"), "--version"], r"(\S+)"),
        "bash": _command_version(["bash", "--version"], r"version (\S+)"),
        "conductor": f"{version('conductor')} at {_git_revision()}",
    }
