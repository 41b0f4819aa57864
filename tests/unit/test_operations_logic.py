"""Pure rules of cluster operations: node states, durations, squeue formats, accounting lines, pending reasons."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conductor import accounting, squeue
from conductor.config import Settings
from conductor.nodestate import NodeState, state
from conductor.partitions import pending_reason
from conductor.units import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), (90, 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1w", 604800), (" 1.5 H ", 5400),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "7 days", "-1d", "0", "3x", True, None, "1e9d"])
def test_bad_durations_say_why(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_retention_and_partition_settings() -> None:
    settings = Settings(job_retention="12h", node_partitions=" gpu, debug ,gpu", accounting_file="")
    assert settings.job_retention == 43200
    assert settings.partitions == ["gpu", "debug"] and settings.node_partitions == "gpu,debug"
    assert settings.accounting_file is None
    assert Settings().partitions == []  # empty: every partition
    for bad in ({"node_partitions": "a b"}, {"job_retention": "soon"}, {"max_job_records": 0},
                {"accounting_file": "relative/jobs.jsonl"}):
        with pytest.raises(ValueError):
            Settings(**bad)


@pytest.mark.parametrize(("books", "expected"), [
    ({"drained": True, "workers": 2, "running": 1, "allocated_cpus": 4}, NodeState.DRAINING),
    ({"drained": True, "workers": 0, "running": 0, "allocated_cpus": 0}, NodeState.DRAINED),
    ({"drained": False, "workers": 0, "running": 0, "allocated_cpus": 0}, NodeState.DOWN),
    ({"drained": False, "workers": 2, "running": 0, "allocated_cpus": 0}, NodeState.IDLE),
    ({"drained": False, "workers": 2, "running": 1, "allocated_cpus": 4}, NodeState.MIXED),
    ({"drained": False, "workers": 2, "running": 2, "allocated_cpus": 4}, NodeState.ALLOCATED),
    ({"drained": False, "workers": 4, "running": 1, "allocated_cpus": 8}, NodeState.ALLOCATED),
])
def test_node_states(books: dict[str, object], expected: NodeState) -> None:
    assert state(total_cpus=8, **books) == expected  # type: ignore[arg-type]


def _node(name: str, node_state: str, partitions: list[str], free_cpus: int = 8,
          total_cpus: int = 8) -> dict[str, object]:
    return {"name": name, "state": node_state, "partitions": partitions, "free_cpus": free_cpus,
            "free_memory": 1 << 40, "total_cpus": total_cpus, "total_memory": 1 << 40}


@pytest.mark.parametrize(("nodes", "reason"), [
    ([], "PartitionDown"),
    ([_node("a", "IDLE", ["other"])], "PartitionDown"),
    ([_node("a", "DRAINED", ["gpu"]), _node("b", "IDLE", ["cpu"])], "PartitionNodesDrained"),
    ([_node("a", "DRAINING", []), _node("b", "DOWN", ["gpu"])], "PartitionNodesDrained"),
    ([_node("a", "DOWN", ["gpu"])], "NodeDown"),
    ([_node("a", "MIXED", ["gpu"], free_cpus=2)], "Resources"),
    ([_node("a", "MIXED", [], free_cpus=4)], "Priority"),
    ([_node("a", "DRAINED", ["gpu"]), _node("b", "IDLE", ["gpu"], free_cpus=2, total_cpus=2)], "ReqNodeNotAvail"),
    ([_node("a", "DOWN", ["gpu"]), _node("b", "IDLE", [], free_cpus=2, total_cpus=2)], "ReqNodeNotAvail"),
    ([_node("a", "DRAINED", ["gpu"]), _node("b", "MIXED", ["gpu"], free_cpus=2)], "Resources"),
])
def test_pending_reasons(nodes: list[dict[str, object]], reason: str) -> None:
    job = {"partition": "gpu", "cpus": 4, "memory": 0}
    assert pending_reason(job, nodes) == reason


JOB = {"id": 42, "name": "train", "account": "ml", "partition": "gpu", "state": "FAILED", "cpus": 4,
       "memory": 8 << 30, "node": "n1", "worker": "n1-3", "exit_code": 137, "reason": "killed by SIGKILL",
       "submitted_at": "2026-12-01T10:00:00.000000Z", "started_at": "2026-12-01T10:00:01.000000Z",
       "ended_at": "2026-12-02T11:02:04.500000Z", "time_limit": 90.0, "pending_reason": None}


def test_accounting_line_uses_sacct_names() -> None:
    line = accounting.record(JOB)
    assert list(line)[:len(accounting.FIELDS)] == list(accounting.FIELDS)
    assert line["MaxRSS"] == "" and accounting.record({**JOB, "max_rss": 2048})["MaxRSS"] == 2048
    assert line["ExitCode"] == "0:9" and line["Elapsed"] == "1-01:02:03" and line["ReqMem"] == "8G"
    assert accounting.record({**JOB, "state": "FAILED", "exit_code": 3, "reason": "exit status 3"})["ExitCode"] == "3:0"
    assert accounting.record({**JOB, "started_at": None})["Elapsed"] == "00:00:00"


def test_since_accepts_dates_and_ages() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert accounting.parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert accounting.parse_since("12h", now) == datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        accounting.parse_since("last week", now)


def test_squeue_format_widths_and_fields() -> None:
    pending = {**JOB, "state": "PENDING", "pending_reason": "Resources", "node": None, "started_at": None,
               "ended_at": None}
    text = squeue.render("%.5i %-4j|%t %R %l %m", [JOB, pending])
    assert text.splitlines() == [
        "JOBID NAME|ST NODELIST(REASON) TIME_LIMIT MIN_MEMORY",
        "   42 trai|F n1 1:30 8G",
        "   42 trai|PD (Resources) 1:30 8G",
    ]
    assert squeue.render("%M", [JOB]).splitlines()[1] == "1-01:02:03"
    assert squeue.render("%%%i", [JOB]).splitlines()[1] == "%42"
    with pytest.raises(ValueError, match="%u"):
        squeue.parse("%.8u")
