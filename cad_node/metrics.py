"""The node's Prometheus counters: one home, incremented where the node records what it did.

Counters live in :data:`REGISTRY`, this process's own (not prometheus_client's default, so
``/metrics`` shows only ``cad_node_*`` names). Gauges that describe state (outbox backlog, queue
depth, disk free) are computed at scrape time by :mod:`cad_node.web.metrics`, from the
database and the filesystem. No label ever holds patient data: outcomes, DICOM statuses and
destinations (``AE@host:port``) only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter(
    "cad_node_instances_received",
    "C-STORE requests answered, by outcome (stored, duplicate, rejected) and DICOM status",
    ["outcome", "status"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "cad_node_received_bytes", "Bytes of instances stored in the spool", registry=REGISTRY
)
ASSOCIATIONS = Counter(
    "cad_node_associations",
    "Associations by outcome (accepted, rejected, aborted)",
    ["outcome"],
    registry=REGISTRY,
)
STUDIES_COMPLETED = Counter(
    "cad_node_studies_completed",
    "Study revisions completed after their quiet period",
    registry=REGISTRY,
)
JOBS = Counter(
    "cad_node_jobs",
    "Analysis jobs by outcome: done, failed (for good) or retry (an attempt failed)",
    ["outcome"],
    registry=REGISTRY,
)
ANALYSIS_SECONDS = Histogram(
    "cad_node_analysis_duration_seconds",
    "Time to analyse a study and write its result objects",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "cad_node_delivery_attempts",
    "Result objects sent (each try counts), per destination",
    ["destination"],
    registry=REGISTRY,
)
DELIVERY_FAILURES = Counter(
    "cad_node_delivery_failures",
    "Send attempts that did not deliver, per destination",
    ["destination"],
    registry=REGISTRY,
)


def status_label(status: int) -> str:
    """A DICOM status as the label value ``0xC240``."""
    return f"0x{status:04X}"
