"""The embedded queue: the pipeline's task functions on an in-process worker thread.

With no broker configured, ``cad-node serve`` runs jobs here, one at a time (inference uses
every core already), through exactly the functions Celery workers run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from cad_node.pipeline import tasks
from cad_node.pipeline.context import PipelineContext

log = logging.getLogger(__name__)


class EmbeddedQueue:
    """Runs ``tasks.run_job`` for each enqueued job on a background thread."""

    def __init__(self, ctx: PipelineContext, workers: int = 1) -> None:
        self.ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cad-worker")

    def enqueue(self, job_id: int) -> None:
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        try:
            tasks.run_job(self.ctx, job_id)
        except Exception as exc:  # recorded in the audit trail by the task
            log.error("job %d stopped: %s", job_id, type(exc).__name__)

    def shutdown(self) -> None:
        """Stop taking jobs; a job in progress finishes or is re-queued at the next start."""
        self._pool.shutdown(wait=False, cancel_futures=True)
