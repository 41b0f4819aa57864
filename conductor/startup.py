"""Loading a process's modules without the cyclic garbage collector scanning them.

Importing creates objects by the ten thousand (classes, functions, pydantic's schemas) that live
as long as the process, and each allocation counts towards the collector's next pass: a worker's
imports ran about 120 collections, two of them full, some 70 ms of its start-up for a few hundred
objects freed. So every conductor process loads its modules inside :func:`loading` (the command
line's own, then what the command needs): no collection runs meanwhile, and what is there at the
end is moved out of the collector's view for good (``gc.freeze``), so that neither the first
collection after start-up nor any later full one scans it all again. The price is the few
hundred cyclic objects the imports leave behind, kept instead of freed, once per process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def loading() -> Iterator[None]:
    """Pause automatic garbage collection for the block, then freeze what exists (see above);
    collection resumes as it was, even on an error."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
