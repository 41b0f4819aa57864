"""The HTTP API: the seed's ``POST /api/v1/jobs/submit`` and what an operator of a batch system expects.

It is a second face of the job module, not a second implementation: the body of a submission is
:class:`conductor.jobs.JobSubmission` itself, and every answer is one of the views the CLI prints
with ``--json``. The API keeps no state of its own; Redis holds everything, so any number of API
processes can serve the same cluster and a restart loses nothing.

The package, in layers (each imports only those above it):

- :mod:`.models`: the response bodies (their field names are the contract shared with the CLI's
  ``--json``) and the drain request; the submission's schema is declared on the job models;
- :mod:`.context`: what every route shares (settings and Redis clients), as a dependency;
- :mod:`.errors`: the error bodies and handlers (422 in FastAPI's shape, 503 naming Redis);
- :mod:`.guards`: the ASGI layer that checks the token, body size and encoding before routing;
- :mod:`.routes`: jobs, cluster (workers, nodes, partitions) and operations (probes, metrics);
- :mod:`.app`: the application factory and ``serve``, which ``conductor api`` runs.

Only ``conductor api`` imports this package (it needs the ``api`` extra: FastAPI, uvicorn,
prometheus-client); the CLI's other commands and the worker never do.
"""

from __future__ import annotations

from .app import PREFIX, create_app, serve

__all__ = ["PREFIX", "create_app", "serve"]
