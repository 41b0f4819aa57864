"""Logging through loguru, with the worker's identity on every line.

Several worker processes may share one LOG_FILE. Each line is written with a single ``write(2)``
on a file opened with O_APPEND, which Linux applies atomically for regular files: lines from
different processes never interleave or overwrite each other. The file is reopened when it is
rotated away (as logging's WatchedFileHandler does), so logrotate needs no signal.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from loguru import logger

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <8} [{extra[identity]}] {message}"


class AppendSink:
    """A loguru sink that appends whole lines atomically to a file shared between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = -1
        self.inode: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(self.fd)
        self.inode = (stat.st_dev, stat.st_ino)

    def write(self, message: str) -> None:
        try:
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) != self.inode:
                self._open()
        except FileNotFoundError:
            self._open()
        os.write(self.fd, message.encode())


class _ToLoguru(logging.Handler):
    """Routes the standard logging of libraries (RQ) into loguru, keeping one format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup(level: str, log_file: Path | None, identity: str) -> None:
    """Send log lines to stderr (journald and supervisord capture it) and to LOG_FILE if set."""
    logger.remove()
    logger.configure(extra={"identity": identity})
    logger.add(sys.stderr, level=level, format=FORMAT, colorize=False, backtrace=False)
    if log_file is not None:
        logger.add(AppendSink(log_file).write, level=level, format=FORMAT, colorize=False, backtrace=False)
    stdlib_level = {"TRACE": logging.DEBUG, "SUCCESS": logging.INFO}.get(level, logging.getLevelName(level))
    logging.basicConfig(handlers=[_ToLoguru()], level=stdlib_level, force=True)
    # RQ narrates every job in three INFO lines; conductor's own lines say what matters.
    for name in ("rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(stdlib_level if stdlib_level <= logging.DEBUG else logging.WARNING)
