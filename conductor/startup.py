"""Loading a process's modules without the cyclic garbage collector scanning them, then or later.

Importing creates objects by the ten thousand (modules, classes, functions, pydantic's schemas)
that live as long as the process. Left to the collector, they cost twice: while loading, each
allocation counts towards its next pass (a worker's imports ran about 120 collections, two of them
full, some 40-80 ms for a few hundred objects freed), and at exit the interpreter tears them all
down one by one, which measured more than half as much CPU again as the imports themselves (225 ms
of a command's 650 here). So every conductor process loads its modules inside :func:`loading`
(the command line's own, then what the command needs): no collection runs meanwhile, and what is
there at the end is moved out of the collector's view for good (``gc.freeze``): no later full
collection scans it again, and at exit it is left to the operating system, which frees a process's
memory at once. The price is the few hundred cyclic objects the imports leave behind, kept instead
of freed, once per process. What imports create holds nothing that must be finalized at exit
(connections, files and log sinks are made afterwards, outside the block), and atexit handlers and
the flushing of the standard streams run as before.
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
