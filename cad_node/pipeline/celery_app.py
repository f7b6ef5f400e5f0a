"""Celery adapter: the same task functions on workers that share broker, database and spool.

Tasks carry job ids only (JSON), are acknowledged late (a worker that dies mid-task leaves its
message to be redelivered) and prefetch one at a time. Inference and delivery have separate
queues, so GPU workers can take only inference (``cad-node worker --queues inference``).

Workers on other machines reach the images through a shared filesystem: ``CAD_NODE_DATA_DIR``
must be the same mount (NFS, CephFS...) on the node and on every worker, since the spool and the
outbox live there; the database URL and broker URL must point at the same services.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from cad_node import metrics
from cad_node.domain import JobState
from cad_node.pipeline import tasks
from cad_node.pipeline.context import PipelineContext
from cad_node.settings import Settings, load_settings

log = logging.getLogger(__name__)

ANALYSE = "cad_node.analyse"
DELIVER = "cad_node.deliver"
INFERENCE_QUEUE = "inference"
DELIVERY_QUEUE = "delivery"

app = Celery("cad_node")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_routes={ANALYSE: {"queue": INFERENCE_QUEUE}, DELIVER: {"queue": DELIVERY_QUEUE}},
)

_context: PipelineContext | None = None
_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    """Point the app at the configured broker (the node and workers call this)."""
    global _settings
    _settings = settings
    app.conf.broker_url = settings.broker_url
    timeout = settings.task_visibility_timeout
    app.conf.broker_transport_options = {
        "visibility_timeout": timeout,
        # kombu looks for abandoned (unacknowledged) messages every interval x throttle
        # seconds, 100 s by default; one cheap scan per interval brings a dead worker's job
        # back soon after its visibility timeout.
        "unacked_restore_interval": max(1, min(10, int(timeout / 2))),
        "unacked_restore_throttle": 1,
    }
    return app


def context() -> PipelineContext:
    """This worker process's context, built from the settings once."""
    global _context
    if _context is None:
        _context = PipelineContext(_settings or load_settings())
    return _context


@worker_process_init.connect
def _fresh_context(**_: Any) -> None:
    # Forked worker processes must not share the parent's database connections.
    global _context
    _context = None
    serve_metrics(_settings or load_settings())


def serve_metrics(settings: Settings) -> int | None:
    """Serve this pool process's counters on ``CAD_NODE_WORKER_METRICS_PORT`` + its index.

    The work (analysis, delivery) happens in the pool processes, so each serves its own
    ``/metrics``; with the default one process per worker that is one port per worker. Returns
    the port, or None when the setting is 0 or the port cannot be bound (logged; the worker
    works on).
    """
    if not settings.worker_metrics_port:
        return None
    from billiard.process import current_process
    from prometheus_client import start_http_server

    port = settings.worker_metrics_port + int(getattr(current_process(), "index", 0) or 0)
    try:
        start_http_server(port, addr=settings.worker_metrics_host, registry=metrics.REGISTRY)
    except OSError as exc:
        log.error(
            "worker metrics: cannot listen on %s:%d (%s)",
            settings.worker_metrics_host,
            port,
            exc.strerror,
        )
        return None
    log.info("worker metrics on %s:%d/metrics", settings.worker_metrics_host, port)
    return port


@app.task(name=ANALYSE, bind=True, max_retries=tasks.MAX_ANALYSIS_ATTEMPTS, acks_late=True)
def analyse_task(self: Any, job_id: int) -> str | None:
    """Analyse one job; on success, queue its delivery."""
    try:
        state = tasks.analyse(context(), job_id)
    except Exception as exc:  # retryable: recorded by the task body
        raise self.retry(exc=exc, countdown=2 ** (self.request.retries + 1)) from exc
    if state == JobState.DELIVERING:
        deliver_task.apply_async((job_id,))
    return None if state is None else str(state)


@app.task(name=DELIVER, acks_late=True)
def deliver_task(job_id: int | None = None) -> dict[str, int]:
    """Send what is due for one job (retries are scheduled by the node's outbox sweeper)."""
    summary = tasks.deliver(context(), job_id)
    return {"sent": summary.sent, "retrying": summary.retrying, "failed": summary.failed}


class CeleryQueue:
    """What ``cad-node serve`` uses with a broker: enqueue only, workers process."""

    def __init__(self, settings: Settings) -> None:
        configure(settings)

    def enqueue(self, job_id: int) -> None:
        analyse_task.apply_async((job_id,))

    def shutdown(self) -> None:
        """Nothing runs here."""
