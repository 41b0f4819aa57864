"""A job's output, capped at MAX_OUTPUT_SIZE bytes.

A job writes into a pipe, never straight into its file: a thread of the worker copies the pipe
into ``slurm-<id>.out`` until the cap, then writes one note and reads on, discarding the rest.
So a job that prints without end cannot fill JOB_ROOT's disk (and take the node and its
neighbours' jobs down), and it is not killed either: its writes keep succeeding. RLIMIT_FSIZE
would cap every file the job writes, not only its output, and end it with SIGXFSZ.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

from loguru import logger

CHUNK = 1 << 16
DRAIN_AFTER_EXIT = 5.0  # seconds to wait for leftovers (a daemon the job started) to close the pipe


def note(limit: int) -> bytes:
    """The line written where the output was cut."""
    return (f"\n[conductor: output truncated at MAX_OUTPUT_SIZE={limit} bytes; the job ran on, "
            "its further output was discarded]\n").encode()


class CappedOutput:
    """Copies a pipe into ``file`` (opened for appending) up to ``limit`` bytes of this run."""

    def __init__(self, read_fd: int, file: BinaryIO, limit: int, job_id: int) -> None:
        self.read_fd = read_fd
        self.file = file
        self.limit = limit
        self.job_id = job_id
        self.written = 0
        self.discarded = 0
        self.thread = threading.Thread(target=self._copy, name=f"output-{job_id}", daemon=True)
        self.thread.start()

    @property
    def truncated(self) -> bool:
        return self.discarded > 0

    def reason(self) -> str:
        """What the job's reason says about its output, empty when nothing was cut."""
        if not self.truncated:
            return ""
        return f"output truncated at MAX_OUTPUT_SIZE={self.limit} bytes ({self.discarded} bytes discarded)"

    def finish(self) -> None:
        """Wait until the copy is complete (the job's processes have closed the pipe)."""
        self.thread.join(DRAIN_AFTER_EXIT)
        if self.thread.is_alive():
            logger.warning("job {}: a process it left holds its output open; output after now is not copied",
                           self.job_id)

    def _copy(self) -> None:
        try:
            while chunk := os.read(self.read_fd, CHUNK):
                room = self.limit - self.written
                if room > 0:
                    self.file.write(chunk[:room])
                    self.written += min(room, len(chunk))
                    chunk = chunk[room:]
                if chunk and not self.discarded:  # the first byte beyond the cap
                    self.file.write(note(self.limit))
                self.file.flush()
                self.discarded += len(chunk)
        except OSError as error:  # a full disk: the job runs on, its output is lost and the log says so
            logger.error("job {}: writing its output failed: {}", self.job_id, error)
            while os.read(self.read_fd, CHUNK):
                pass
        finally:
            os.close(self.read_fd)
            self.file.close()
