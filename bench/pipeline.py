"""Pipeline latency and throughput with real parts: Orthanc -> cad-node -> Orthanc.

    python bench/pipeline.py [--model models/NAME | --stand-in] [--studies 4] [--quiet 2]

Orthanc pushes four-view studies to the node; the benchmark measures the time from the
moment Orthanc's push returns (the last image acknowledged) to the moment the last result
object is stored in Orthanc, as a median over studies sent one at a time (this includes the
quiet period that decides a study is complete, printed separately). Then it sends all studies
at once and prints studies per hour with one and with two Celery workers (Redis broker).
Without --model it uses the installed default model; --stand-in (or no installed model) uses
an untrained DenseNet121 at 512 px as a timing stand-in (not a model), the load the inference
benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from factories import four_views, write  # noqa: E402
from services import (  # noqa: E402
    Orthanc,
    Process,
    Redis,
    free_port,
    node_env,
    serve,
    wait_listening,
    wait_until,
    worker,
)

RESULTS_PER_STUDY = 6  # Mammography CAD SR, TID 1500 SR, 4 heatmap SCs


def model_folder(tmp: Path, explicit: Path | None, stand_in: bool = False) -> Path:
    if explicit:
        return explicit
    from cad_node.errors import ModelError
    from cad_node.model_folder import default_model_path
    from cad_node.training.architectures import build_model
    from cad_node.training.export import export_model_folder

    if not stand_in:
        try:
            return default_model_path()
        except ModelError:
            pass
    manifest = {
        "name": "densenet121-untrained-timing-stand-in",
        "version": "-",
        "architecture": "densenet121",
        "architecture_kwargs": {},
        "input": {"spacing_mm": 0.4, "size": [512, 512]},
        "class_names": ["not_malignant", "malignant"],
        "positive_class": "malignant",
        "threshold": 0.5,
        "training_data": {"description": "none: untrained"},
        "metrics": {},
        "smoke_test": True,
    }
    return export_model_folder(build_model("densenet121").eval(), tmp / "stand-in", manifest)


def push_study(orthanc: Orthanc, tmp: Path) -> tuple[str, float]:
    """Upload a synthetic 4-view study to Orthanc and have Orthanc push it to the node."""
    views = four_views()
    study_id = ""
    for ds in views:
        ds.Rows, ds.Columns = 2560, 2048  # full-field-digital-like size
        ds.PixelData = np.random.default_rng(0).integers(0, 4096, (2560, 2048), np.uint16).tobytes()
        study_id = orthanc.upload(write(ds, tmp / "modality"))
    orthanc.push_study("cadnode", study_id)
    return study_id, time.perf_counter()


def wait_results(orthanc: Orthanc, study_id: str, timeout: float = 600) -> float:
    wait_until(
        lambda: len(orthanc.instances(study_id)) >= 4 + RESULTS_PER_STUDY,
        timeout,
        f"results of {study_id}",
        interval=0.1,
    )
    return time.perf_counter()


def run(tmp: Path, model: Path, n: int, quiet: float, workers: int) -> tuple[list[float], float]:
    node_port = free_port()
    orthanc = Orthanc(tmp / "orthanc", {"cadnode": ("CADNODE", node_port)})
    started: list[Process] = [orthanc]
    orthanc.start()
    env = node_env(
        tmp / "data",
        node_port,
        CAD_NODE_MODEL=str(model),
        CAD_NODE_STUDY_QUIET_SECONDS=str(quiet),
        CAD_NODE_LOG_LEVEL="WARNING",
        CAD_NODE_DESTINATIONS=json.dumps(
            [{"ae_title": Orthanc.AE, "host": "127.0.0.1", "port": orthanc.dicom_port}]
        ),
    )
    try:
        if workers:
            redis = Redis(tmp)
            redis.start()
            started.append(redis)
            env["CAD_NODE_BROKER_URL"] = redis.url
        node = serve(tmp / "data", env)
        node.start()
        started.append(node)
        wait_listening(node_port)
        if workers:  # share the cores between the workers instead of oversubscribing them
            env["CAD_NODE_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        for i in range(workers):
            w = worker(tmp / "data", env, f"worker{i}")
            w.start()
            started.append(w)
        latencies = []
        if not workers:  # one study at a time: latency (embedded queue)
            for _ in range(n):
                study_id, acked = push_study(orthanc, tmp)
                latencies.append(wait_results(orthanc, study_id) - acked)
        start = time.perf_counter()  # all at once: throughput
        pushed = [push_study(orthanc, tmp)[0] for _ in range(n)]
        end = max(wait_results(orthanc, s) for s in pushed)
        return latencies, n / (end - start) * 3600
    finally:
        for process in reversed(started):
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument(
        "--stand-in", action="store_true", help="untrained DenseNet121 at 512 px (timing only)"
    )
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cad-node-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = model_folder(tmp, args.model, args.stand_in)
        print(
            f"model {model}; {args.studies} studies of 4 views 2560x2048; "
            f"quiet period {args.quiet:g} s"
        )
        latencies, embedded_rate = run(tmp / "embedded", model, args.studies, args.quiet, 0)
        median = statistics.median(latencies)
        runs = ", ".join(f"{x:.1f}" for x in latencies)
        print(
            f"last image acknowledged -> last result in Orthanc: median {median:.1f} s "
            f"(of which quiet period {args.quiet:g} s; runs {runs})"
        )
        print(f"embedded queue:      {embedded_rate:6.0f} studies/hour")
        for n_workers in (1, 2):
            _, rate = run(tmp / f"celery{n_workers}", model, args.studies, args.quiet, n_workers)
            print(f"celery, {n_workers} worker(s): {rate:6.0f} studies/hour")


if __name__ == "__main__":
    main()
