"""The generator: settings in, service files out, through the templates in ``templates/``.

One small base class and one class per target, as honcho's exporters do. Output is
deterministic (same settings, same bytes) and written atomically; an unchanged file is left
untouched so that supervisord, systemd and Ansible see no change where there is none.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import DEFAULT_LOCATIONS, Settings


class Exporter:
    """Renders one target's templates for a node."""

    target: str = ""

    def __init__(self, settings: Settings) -> None:
        # jinja2 is imported here: every worker and CLI call loads this module (through the CLI)
        # and only rendering needs it (it costs each worker about 1.4 MiB and 30 ms).
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        self.settings = settings
        self.env = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
        self.env.filters["supervisor_arg"] = supervisor_arg

    def context(self) -> dict[str, object]:
        settings = self.settings
        return {
            "settings": settings,
            "conductor": settings.install_prefix / "bin" / "conductor",
            "config": settings.config_path or DEFAULT_LOCATIONS[-1],
            "indices": range(1, settings.worker_concurrency + 1),
        }

    def files(self) -> Iterator[tuple[str, str]]:
        """(file name, content) for every file of this target."""
        raise NotImplementedError

    def _render(self, template: str) -> str:
        return self.env.get_template(f"{self.target}/{template}").render(self.context())


def supervisor_arg(value: object) -> str:
    """One argument of a supervisord ``command=``: shell-quoted (it splits with shlex) and with
    ``%`` doubled (it expands ``%(name)s`` first), so paths with spaces or ``%`` survive."""
    return shlex.quote(str(value)).replace("%", "%%")


class Supervisord(Exporter):
    """``conductor.conf``: one program per worker (and the API), for supervisord's conf.d."""

    target = "supervisord"

    def files(self) -> Iterator[tuple[str, str]]:
        yield "conductor.conf", self._render("conductor.conf.j2")


class Systemd(Exporter):
    """``conductor-worker@.service``, ``conductor-workers.target`` and, with the API, ``conductor-api.service``.

    The instance template does not depend on WORKER_CONCURRENCY, only the target does: a change
    of N rewrites the target alone, so a daemon-reload never changes the running instances.
    Values that land in unit files are escaped for systemd (``%`` specifiers, ``$`` expansion,
    quoting), so an odd path can make a unit odd-looking but never a different one.
    """

    target = "systemd"
    PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._+:@,=-")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.env.filters.update(exec_arg=self.exec_arg, unit_text=self.unit_text)

    def context(self) -> dict[str, object]:
        context = super().context()
        logs = [self.settings.log_file.parent] if self.settings.log_file else []
        history = [self.settings.accounting_file.parent] if self.settings.accounting_file else []
        context["worker_writable"] = [self.path_arg(p) for p in
                                      self.outermost([self.settings.job_root, *logs, *history])]
        context["api_writable"] = [self.path_arg(p) for p in self.outermost(logs)]
        return context

    def files(self) -> Iterator[tuple[str, str]]:
        yield "conductor-worker@.service", self._render("conductor-worker@.service.j2")
        yield "conductor-workers.target", self._render("conductor-workers.target.j2")
        if self.settings.api_enabled:
            yield "conductor-api.service", self._render("conductor-api.service.j2")

    @staticmethod
    def outermost(paths: list[Path]) -> list[Path]:
        """``paths`` without duplicates and without those inside another one (ReadWritePaths=)."""
        kept: list[Path] = []
        for path in paths:
            if not any(path.is_relative_to(other) for other in kept):
                kept = [other for other in kept if not other.is_relative_to(path)] + [path]
        return kept

    @staticmethod
    def unit_text(value: object) -> str:
        """Free text in a unit file (Description=, comments): one line, ``%`` escaped."""
        return " ".join(str(value).split()).replace("%", "%%")

    @classmethod
    def quoted(cls, text: str) -> str:
        if text and set(text) <= cls.PLAIN:
            return text
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'

    @classmethod
    def path_arg(cls, value: object) -> str:
        """A path in a list setting (ReadWritePaths=): ``%`` escaped, quoted when needed."""
        return cls.quoted(str(value).replace("%", "%%"))

    @classmethod
    def exec_arg(cls, value: object) -> str:
        """One word of ExecStart=: ``%`` and ``$`` escaped, quoted when needed."""
        return cls.quoted(str(value).replace("%", "%%").replace("$", "$$"))


EXPORTERS: dict[str, type[Exporter]] = {Supervisord.target: Supervisord, Systemd.target: Systemd}


def write(files: Iterator[tuple[str, str]], out: Path) -> list[tuple[Path, bool]]:
    """Write each file atomically into ``out``; returns (path, changed) for each."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files:
        path = out / name
        changed = not path.exists() or path.read_text() != content
        if changed:
            with tempfile.NamedTemporaryFile("w", dir=out, prefix=f".{name}.", delete=False) as partial:
                partial.write(content)
            os.chmod(partial.name, 0o644)
            os.replace(partial.name, path)
        written.append((path, changed))
    return written
