"""What a worker process needs to run tasks: repositories, spool, outbox and the model."""

from __future__ import annotations

import os
import socket
import threading
from functools import cached_property

from sqlalchemy import Engine

from cad_node.atna import AuditTrail
from cad_node.audit.db import make_engine
from cad_node.audit.deliveries import DeliveryRepository
from cad_node.audit.jobs import JobRepository
from cad_node.delivery.outbox import Outbox, RetryPolicy
from cad_node.inference.model import CadModel, load_cad_model
from cad_node.settings import Settings


class PipelineContext:
    """Built once per worker process from the settings; the model loads on first use."""

    def __init__(
        self, settings: Settings, engine: Engine | None = None, *, atna: AuditTrail | None = None
    ) -> None:
        """``engine``, ``atna``: share the caller's (they stay the caller's to close)."""
        self.settings = settings
        self._owns_atna = atna is None
        self.atna = atna or AuditTrail.from_settings(settings)
        self._owns_engine = engine is None
        self.engine = engine or make_engine(settings.effective_database_url)
        self.jobs = JobRepository(self.engine)
        self.deliveries = DeliveryRepository(self.engine)
        self.outbox = Outbox(
            self.deliveries,
            settings.outbox_dir,
            settings.destinations,
            calling_ae=settings.ae_title,
            policy=RetryPolicy.from_settings(settings),
            timeout=settings.delivery_timeout_seconds,
            atna=self.atna,
        )
        self._model_lock = threading.Lock()
        self._model: CadModel | None = None

    @cached_property
    def worker_name(self) -> str:
        """``host:pid``, recorded on the jobs this process runs."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def model(self) -> CadModel:
        """The configured model, loaded and verified once per process."""
        with self._model_lock:
            if self._model is None:
                if self.settings.torch_threads:
                    import torch

                    torch.set_num_threads(self.settings.torch_threads)
                self._model = load_cad_model(self.settings.model_path, self.settings.device)
            return self._model

    def close(self) -> None:
        if self._owns_atna:
            self.atna.close()
        if self._owns_engine:
            self.engine.dispose()
