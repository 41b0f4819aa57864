"""A LOG_FILE shared by several worker processes keeps every line whole."""

from __future__ import annotations

import re
import subprocess
import sys

WRITER = """
import sys
from pathlib import Path
from loguru import logger
from conductor.logs import setup

setup("INFO", Path(sys.argv[1]), f"Worker-{sys.argv[2]}")
for n in range(int(sys.argv[3])):
    logger.info("line {} {}", n, "x" * (n % 7 * 1500))  # up to 9 kB: beyond any stdio buffer
"""


def test_concurrent_writers_never_interleave_or_lose_lines(tmp_path):
    log, writers, lines = tmp_path / "shared.log", 4, 1500
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(i), str(lines)],
                                  stderr=subprocess.DEVNULL) for i in range(1, writers + 1)]
    assert [p.wait(timeout=120) for p in processes] == [0] * writers
    pattern = re.compile(r"^\S+ \S+ INFO     \[Worker-(\d)\] line (\d+) (x*)$")
    seen: dict[str, set[int]] = {str(i): set() for i in range(1, writers + 1)}
    for text in log.read_text().splitlines():
        match = pattern.match(text)
        assert match, f"mangled line: {text[:120]!r}"
        worker, n, filler = match.groups()
        assert len(filler) == int(n) % 7 * 1500
        seen[worker].add(int(n))
    assert all(numbers == set(range(lines)) for numbers in seen.values())


def test_a_rotated_log_file_is_reopened(tmp_path):
    log = tmp_path / "worker.log"
    script = ("import sys, os\nfrom pathlib import Path\nfrom loguru import logger\nfrom conductor.logs import setup\n"
              "setup('INFO', Path(sys.argv[1]), 'Worker-1')\nlogger.info('before')\n"
              "os.rename(sys.argv[1], sys.argv[1] + '.1')\nlogger.info('after')\n")
    subprocess.run([sys.executable, "-c", script, str(log)], check=True, stderr=subprocess.DEVNULL)
    assert "before" in (tmp_path / "worker.log.1").read_text()
    assert "after" in log.read_text() and "before" not in log.read_text()
