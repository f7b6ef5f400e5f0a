"""``/metrics``: the node's counters plus gauges computed at scrape time."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cad_node import metrics
from cad_node.domain import JobState
from cad_node.web.context import WebContext

log = logging.getLogger(__name__)


class StateCollector(Collector):
    """Outbox backlog, queue depth (database) and disk free (filesystem), read per scrape."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        spool = self.ctx.spool
        free = GaugeMetricFamily("cad_node_disk_free_bytes", "Free bytes on the spool's filesystem")
        try:
            free.add_metric([], shutil.disk_usage(spool.root).free)
        except OSError as exc:
            log.warning("metrics: cannot read free space (%s)", type(exc).__name__)
        yield free
        yield GaugeMetricFamily(
            "cad_node_disk_reserve_bytes",
            "Free space below which C-STORE answers Out of Resources",
            value=spool.min_free_bytes,
        )
        try:
            jobs = self.ctx.jobs.counts()["jobs"]
            backlog = self.ctx.deliveries.backlog()
        except Exception as exc:  # a scrape must answer; the gauges are absent meanwhile
            log.warning("metrics: database unreachable (%s)", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "cad_node_queue_depth",
            "Jobs waiting for a worker (queued)",
            value=jobs.get(JobState.QUEUED, 0),
        )
        waiting = GaugeMetricFamily(
            "cad_node_outbox_backlog",
            "Result objects waiting in the outbox, per destination and state (pending, failed)",
            labels=["destination", "state"],
        )
        for (destination, state), n in sorted(backlog.items()):
            waiting.add_metric([destination, state], n)
        yield waiting


class _Counters(Collector):
    """The process's counters (:data:`cad_node.metrics.REGISTRY`)."""

    def collect(self) -> Iterator[Metric]:
        yield from metrics.REGISTRY.collect()


def build_registry(ctx: WebContext) -> CollectorRegistry:
    """This node's registry: the process's counters and this node's state gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Counters())
    registry.register(StateCollector(ctx))
    return registry
