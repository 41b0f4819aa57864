"""What converging a node needs from the host: its service user, directories, and who can reach what.

Small functions over the operating system (pwd, grp, os.stat, useradd) so that ``apply`` can
ask questions in check mode without changing anything, and make the same change on a real run.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path


class HostError(RuntimeError):
    """The host cannot be brought to what app.properties says; the message says what to do."""


@dataclass(frozen=True)
class Account:
    """A user as the kernel sees it when it checks permissions."""

    name: str
    uid: int | None  # None: the user does not exist (yet)
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return cls(name, None, frozenset())
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {entry.pw_gid}
        return cls(name, entry.pw_uid, frozenset(groups))

    def may(self, path: Path, bit: int) -> bool:
        """Whether this user has permission ``bit`` (``os.R_OK``/``W_OK``/``X_OK``) on ``path``."""
        if self.uid == 0:
            return True
        info = path.stat()
        shift = 6 if info.st_uid == self.uid else 3 if info.st_gid in self.gids else 0
        return bool((info.st_mode >> shift) & bit)


def blocked(path: Path, account: Account) -> Path | None:
    """The first directory on the way to ``path`` that ``account`` cannot pass, or None.

    A checkout in a 0700 home is the usual case: root can read it, the service user cannot even
    look inside /root, and every service would fail with "Permission denied" after starting.
    """
    path = Path(os.path.abspath(path))
    current = Path(path.anchor)
    for part in path.parts[1:]:
        if current.is_dir() and not account.may(current, os.X_OK):
            return current
        current = current / part
        if current.is_symlink():
            target = blocked(current.resolve(), account)
            if target is not None:
                return target
    return None


def unreachable_message(what: str, path: Path, wall: Path, user: str) -> str:
    info = wall.stat()
    owner = _name(pwd.getpwuid, info.st_uid)
    return (
        f"SERVICE_USER {user} cannot reach {what} {path}: {wall} (mode {stat.S_IMODE(info.st_mode):04o}, "
        f"owner {owner}) does not let it through, so every service would fail with 'Permission denied'.\n"
        f"Nothing was started. Do one of these, then run it again:\n"
        f"  - put it where {user} can read it (for a checkout: git clone {_checkout(path)} /srv/conductor, "
        f"and run from there);\n"
        f"  - let {user} through {wall} without letting it list it: chmod o+x {wall};\n"
        f"  - run it as an ordinary user (not root): the services then run as that user."
    )


def _checkout(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return path.parent


def _name(lookup, number: int) -> str:  # type: ignore[no-untyped-def]
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def ensure_user(name: str, check: bool, comment: str = "conductor workers") -> list[str]:
    """The system group and user ``name`` (no login, no home): what was (or would be) created."""
    done = []
    try:
        grp.getgrnam(name)
    except KeyError:
        done.append(f"group {name}")
        if not check:
            _run(["groupadd", "--system", name])
    try:
        pwd.getpwnam(name)
    except KeyError:
        done.append(f"user {name}")
        if not check:
            _run(["useradd", "--system", "--gid", name, "--home-dir", "/nonexistent", "--no-create-home",
                  "--shell", "/usr/sbin/nologin", "--comment", comment, name])
    return done


def ensure_dir(path: Path, owner: str, group: str, mode: int, check: bool) -> list[str]:
    """``path`` a directory with this owner, group and mode (parents created root-owned 0755)."""
    try:
        uid = pwd.getpwnam(owner).pw_uid
        gid = grp.getgrnam(group).gr_gid
    except KeyError:  # check mode before the user exists
        uid = gid = -1
    if not path.is_dir():
        if not check:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.mkdir(mode=mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return [f"directory {path} ({mode:04o} {owner}:{group})"]
    info = path.stat()
    if (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, mode):
        return []
    if not check:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return [f"directory {path} ({mode:04o} {owner}:{group})"]


def install_file(source: Path, dest: Path, group: str, mode: int, check: bool) -> list[str]:
    """Copy ``source`` to ``dest`` (root-owned, ``group``, ``mode``) atomically when it differs."""
    content = source.read_bytes()
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    if dest.is_file():
        info = dest.stat()
        if dest.read_bytes() == content and (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, gid, mode):
            return []
    if not check:
        partial = dest.with_name(f".{dest.name}.new")
        partial.write_bytes(content)
        os.chown(partial, 0, gid)
        os.chmod(partial, mode)
        os.replace(partial, dest)
    return [f"{dest} ({mode:04o} root:{group})"]


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise HostError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
