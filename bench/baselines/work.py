"""The job function every RQ baseline runs: bash on the benchmark's script file.

conductor runs each job as ``bash script.sh`` in a child process; a user of plain RQ who wants
the same thing writes this function. Keeping it this small keeps the baselines fair: they pay
for their own path (enqueue, dequeue, work-horse) and for bash, nothing else.
"""

from __future__ import annotations

import subprocess


def run_script(path: str) -> None:
    """Run ``bash path``; a non-zero exit fails the RQ job, as a failed script fails a conductor job."""
    subprocess.run(["bash", path], stdin=subprocess.DEVNULL, check=True)
