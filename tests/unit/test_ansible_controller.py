"""What the Ansible controller needs, and that it fails at once, saying so, when it lacks it.

The controller may run any ansible-core from 2.14 on (the checkout's .venv, pip's, apt's); what
the role needs of it beyond that is bash and a Python with pip to build the wheelhouse. That
Python is checked by ``deploy/wheelhouse.sh --check``, the role's first task on the controller,
before anything is built or touches a node. (tests/system/test_ansible.py deploys with an
operator's own ansible-playbook when given ``--ansible-playbook``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE_SH = ROOT / "deploy" / "wheelhouse.sh"
BIN = Path(sys.executable).parent


def check(python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run([str(WHEELHOUSE_SH), "--check"], env=env, capture_output=True, text=True, timeout=60)


def test_a_python_with_pip_of_the_required_version_builds() -> None:
    result = check(sys.executable)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [sys.executable, "%d.%d" % sys.version_info[:2]]


def test_a_python_without_pip_is_refused_saying_what_to_install(tmp_path: Path) -> None:
    venv.create(tmp_path / "bare", with_pip=False)
    result = check(str(tmp_path / "bare" / "bin" / "python"))
    assert result.returncode == 2
    assert "has no pip (Debian: apt-get install python3-pip)" in result.stderr
    assert "conductor_wheelhouse_python" in result.stderr and "conductor_wheelhouse_build=false" in result.stderr


def test_a_missing_python_is_refused_by_name(tmp_path: Path) -> None:
    result = check(str(tmp_path / "no-such-python"))
    assert result.returncode == 2
    assert f"cannot build wheels with {tmp_path / 'no-such-python'}: it does not run" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the play uses become; on this machine only root needs no password")
def test_the_play_stops_at_its_first_controller_task_without_a_builder(tmp_path: Path) -> None:
    """ansible-playbook against this machine (local connection, --check): it fails on the builder
    check, before the wheelhouse is built and before any task that looks at or changes a node."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[compute]\nlocalnode ansible_connection=local ansible_become=false\n\n[compute:vars]\n"
        f"ansible_python_interpreter={sys.executable}\nconductor_redis_url=redis://127.0.0.1:1/0\n"
        f"conductor_wheelhouse={tmp_path / 'wheelhouse'}\nconductor_wheelhouse_python={tmp_path / 'no-such-python'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CONDUCTOR_"))}
    env.update({"PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", "ANSIBLE_CONFIG": str(ROOT / "ansible/ansible.cfg"),
                "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1"})
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "ansible/deploy.yml"),
                             "--check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "TASK [conductor : Check the Python that builds the wheels" in output, output
    assert f"cannot build wheels with {tmp_path / 'no-such-python'}: it does not run" in output, output
    after = output.split("TASK [conductor : Check the Python that builds the wheels", 1)[1]
    assert "TASK [" not in after.split("PLAY RECAP")[0], output
    assert not (tmp_path / "wheelhouse").exists()
