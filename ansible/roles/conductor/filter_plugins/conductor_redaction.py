"""``conductor_redacted``: conductor's own REDIS_URL redaction, for the role's ``--diff`` guard.

The role ships inside the checkout (ansible/roles/conductor), so the controller loads
conductor/redaction.py from there by path: the guard hides app.properties exactly when the
redaction used by conductor itself finds a password, with no second rule to drift.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[4] / "conductor" / "redaction.py"
_spec = importlib.util.spec_from_file_location("conductor_role_redaction", _SOURCE)
assert _spec is not None and _spec.loader is not None, f"cannot load {_SOURCE}"
_redaction = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redaction)


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict[str, object]:
        return {"conductor_redacted": _redaction.redacted}
