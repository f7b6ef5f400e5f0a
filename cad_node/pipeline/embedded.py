"""The embedded queue: the pipeline's task functions on in-process worker threads.

With no broker configured, ``cad-node serve`` runs jobs here, one at a time by default
(inference uses every core already), through exactly the functions Celery workers run. The
threads are daemons: stopping the node does not wait for a job in progress, which is safe
because jobs are idempotent and unfinished ones are queued again at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading

from cad_node.pipeline import tasks
from cad_node.pipeline.context import PipelineContext

log = logging.getLogger(__name__)


class EmbeddedQueue:
    """Runs ``tasks.run_job`` for each enqueued job on background daemon threads."""

    def __init__(self, ctx: PipelineContext, workers: int = 1) -> None:
        self.ctx = ctx
        self._jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"cad-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, job_id: int) -> None:
        self._jobs.put(job_id)

    def _work(self) -> None:
        while (job_id := self._jobs.get()) is not None:
            try:
                tasks.run_job(self.ctx, job_id)
            except Exception as exc:  # recorded in the audit trail by the task
                log.error("job %d stopped: %s", job_id, type(exc).__name__)

    def shutdown(self) -> None:
        """Stop taking jobs; a job in progress is abandoned and re-queued at the next start."""
        for _ in self._threads:
            self._jobs.put(None)
