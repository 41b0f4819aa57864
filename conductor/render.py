"""The generator: settings in, service files out, through the templates in ``templates/``.

One small base class and one class per target, as honcho's exporters do. Output is
deterministic (same settings, same bytes) and written atomically; an unchanged file is left
untouched so that supervisord, systemd and Ansible see no change where there is none.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .config import DEFAULT_LOCATIONS, Settings


class Exporter:
    """Renders one target's templates for a node."""

    target: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )

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


class Supervisord(Exporter):
    """``conductor.conf``: one program per worker (and the API), for supervisord's conf.d."""

    target = "supervisord"

    def files(self) -> Iterator[tuple[str, str]]:
        yield "conductor.conf", self._render("conductor.conf.j2")


EXPORTERS: dict[str, type[Exporter]] = {Supervisord.target: Supervisord}


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
