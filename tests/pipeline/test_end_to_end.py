"""End to end with real parts: Orthanc as the PACS, Redis, Celery workers, `cad-node serve`.

Orthanc pushes a four-view study to the node (REST ``/modalities/<name>/store``); the node
analyses it and sends the SRs and heatmap SCs back; the test reads them from Orthanc's REST API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from factories import four_views, write
from helpers import IN_CI, predecessor_uids, wait_for
from model_factory import tiny_model_folder
from pydicom import Dataset, dcmread
from services import Orthanc, Process, Redis, free_port, node_env, serve, wait_listening, worker

from cad_node.audit.db import make_engine
from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord
from cad_node.sop_classes import MAMMOGRAPHY_FOR_PRESENTATION

MAMMO_CAD_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.50"
COMPREHENSIVE_3D_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"

pytestmark = pytest.mark.slow


def _require(binary: str) -> None:
    import shutil

    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        if IN_CI:
            pytest.fail(f"{binary} missing (scripts/bootstrap --test installs it)")
        pytest.skip(f"{binary} not installed")


@dataclass
class Stack:
    tmp: Path
    orthanc: Orthanc
    node_port: int
    env: dict[str, str]
    processes: list[Process]

    @property
    def data_dir(self) -> Path:
        return Path(self.env["CAD_NODE_DATA_DIR"])

    @property
    def database_url(self) -> str:
        default = f"sqlite:///{self.data_dir / 'cad-node.db'}"
        return self.env.get("CAD_NODE_DATABASE_URL", default)

    @cached_property
    def _jobs(self) -> JobRepository:
        return JobRepository(make_engine(self.database_url))

    def jobs(self) -> JobRepository:
        """The node's job records, read through one engine for the whole test."""
        return self._jobs

    def start(self, process: Process) -> Process:
        process.start()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[1:]}\n{p.log()[-3000:]}" for p in self.processes)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    _require("Orthanc")
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", {"cadnode": ("CADNODE", node_port)})
    orthanc.start()
    env = node_env(
        tmp_path / "data",
        node_port,
        CAD_NODE_MODEL=str(tiny_model_folder(tmp_path / "model", size=128)),
        CAD_NODE_DESTINATIONS=json.dumps(
            [{"ae_title": Orthanc.AE, "host": "127.0.0.1", "port": orthanc.dicom_port}]
        ),
    )
    s = Stack(tmp_path, orthanc, node_port, env, [orthanc])
    yield s
    for process in reversed(s.processes):
        process.stop()
    if "_jobs" in s.__dict__:
        s._jobs.engine.dispose()


def _push_four_views(stack: Stack) -> tuple[str, list[Dataset]]:
    views = four_views()
    study_id = ""
    for ds in views:
        study_id = stack.orthanc.upload(write(ds, stack.tmp / "modality"))
    stack.orthanc.push_study("cadnode", study_id)
    return study_id, views


def _results_in_orthanc(stack: Stack, study_id: str, expected: int) -> list[Dataset]:
    def ready() -> list[Dataset] | None:
        instances = stack.orthanc.instances(study_id)
        if len(instances) < 4 + expected:
            return None
        datasets = [dcmread(BytesIO(stack.orthanc.file(i["ID"]))) for i in instances]
        return [d for d in datasets if d.SOPClassUID != MAMMOGRAPHY_FOR_PRESENTATION]

    try:
        return wait_for(ready, timeout=120, interval=0.5)
    except AssertionError:
        raise AssertionError(f"results did not reach Orthanc\n{stack.logs()}") from None


def _walk(items: Any) -> Iterator[Dataset]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _check_results(stack: Stack, views: list[Dataset], results: list[Dataset]) -> None:
    classes = sorted(str(d.SOPClassUID) for d in results)
    assert classes == sorted(
        [MAMMO_CAD_SR_CLASS, COMPREHENSIVE_3D_SR_CLASS] + [SECONDARY_CAPTURE_CLASS] * 4
    )
    uid = views[0].StudyInstanceUID
    assert {d.StudyInstanceUID for d in results} == {uid}
    # Orthanc holds the last object as soon as it answers the C-STORE; the node records that
    # send just after, and only then is the job done.
    [job] = wait_for(
        lambda: [j for j in stack.jobs().jobs_of_study(uid) if j.state == "done"], timeout=30
    )
    breasts = job.result["breasts"]
    sr = next(d for d in results if d.SOPClassUID == MAMMO_CAD_SR_CLASS)
    items = list(_walk(sr.ContentSequence))
    scores = sorted(
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.get("ValueType") == "NUM"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Probability of cancer"
    )
    # Per breast the score, and behind it the score of each image it was derived from.
    expected = [b["score"] for b in breasts.values()]
    expected += [i["score"] for i in job.result["images"]]
    assert scores == pytest.approx(sorted(expected), abs=1e-4)
    referenced = {
        ref.ReferencedSOPInstanceUID for i in items for ref in i.get("ReferencedSOPSequence", [])
    }
    assert {v.SOPInstanceUID for v in views} <= referenced
    for sc in (d for d in results if d.SOPClassUID == SECONDARY_CAPTURE_CLASS):
        assert sc.PatientID == views[0].PatientID and sc.BurnedInAnnotation == "YES"


def test_orthanc_to_node_to_orthanc_with_redis_and_a_celery_worker(
    database_url: str, stack: Stack
) -> None:
    """On each audit database backend: the node and its worker share it."""
    _require("redis-server")
    stack.env["CAD_NODE_DATABASE_URL"] = database_url
    redis = Redis(stack.tmp)
    stack.start(redis)
    stack.env["CAD_NODE_BROKER_URL"] = redis.url
    stack.start(serve(stack.data_dir, stack.env))
    wait_listening(stack.node_port)
    stack.start(worker(stack.data_dir, stack.env))
    study_id, views = _push_four_views(stack)
    _check_results(stack, views, _results_in_orthanc(stack, study_id, 6))
    [job] = stack.jobs().jobs_of_study(views[0].StudyInstanceUID)
    assert job.worker and job.attempts == 1


def test_orthanc_to_node_to_orthanc_with_the_embedded_queue(stack: Stack) -> None:
    stack.start(serve(stack.data_dir, stack.env))
    wait_listening(stack.node_port)
    study_id, views = _push_four_views(stack)
    _check_results(stack, views, _results_in_orthanc(stack, study_id, 6))


def test_worker_killed_mid_job_completes_once_on_a_new_worker(stack: Stack) -> None:
    _require("redis-server")
    redis = Redis(stack.tmp)
    stack.start(redis)
    stack.env["CAD_NODE_BROKER_URL"] = redis.url
    stack.env["CAD_NODE_TASK_VISIBILITY_TIMEOUT"] = "5"
    stack.start(serve(stack.data_dir, stack.env))
    wait_listening(stack.node_port)
    first = stack.start(worker(stack.data_dir, stack.env, "worker1"))
    study_id, views = _push_four_views(stack)
    uid = views[0].StudyInstanceUID

    def running() -> bool:
        jobs = stack.jobs().jobs_of_study(uid)
        return bool(jobs) and jobs[0].state == "running"

    wait_for(running, timeout=60, interval=0.02)
    first.kill()
    stack.start(worker(stack.data_dir, stack.env, "worker2"))
    results = _results_in_orthanc(stack, study_id, 6)
    _check_results(stack, views, results)
    [job] = stack.jobs().jobs_of_study(uid)
    assert job.attempts == 2  # the killed attempt, then the one that finished
    assert len(stack.orthanc.instances(study_id)) == 4 + 6  # results arrived once


def test_the_shipped_models_marks_reach_orthanc_on_the_source_images(stack: Stack) -> None:
    """The malignant CBIS-DDSM exam through Orthanc with models/DEFAULT: the CAD SR Orthanc
    stores has a finding for each mark, its centre on the right source image."""
    from cad_node.demo import sample_exams

    del stack.env["CAD_NODE_MODEL"]  # models/DEFAULT, which localises
    stack.start(serve(stack.data_dir, stack.env))
    wait_listening(stack.node_port)
    exam = next(e for e in sample_exams() if "P_00820" in str(e[0].PatientID))
    study_id = ""
    for n, ds in enumerate(exam):
        study_id = stack.orthanc.upload(write(ds, stack.tmp / "modality", f"{n}.dcm"))
    stack.orthanc.push_study("cadnode", study_id)
    results = _results_in_orthanc(stack, study_id, 6)
    uid = exam[0].StudyInstanceUID
    [job] = wait_for(
        lambda: [j for j in stack.jobs().jobs_of_study(uid) if j.state == "done"], timeout=30
    )
    marks = {
        (i["sop_instance_uid"], d["x"] + 0.5, d["y"] + 0.5)  # Graphic Data: pixel centres + 0.5
        for i in job.result["images"]
        for d in i["detections"]
    }
    assert marks, "the malignant exam gave no mark (the demo shows several)"
    sr = next(d for d in results if d.SOPClassUID == MAMMO_CAD_SR_CLASS)
    points = {
        (
            str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            *(round(float(v), 1) for v in item.GraphicData),
        )
        for item in _walk(sr.ContentSequence)
        if item.get("ValueType") == "SCOORD" and item.GraphicType == "POINT"
    }
    assert points == {(sop, round(x, 1), round(y, 1)) for sop, x, y in marks}


def _http(port: int, path: str, body: dict[str, Any] | None = None, token: str = "") -> Any:
    """A real HTTP request to the node or a worker: (status, body as text)."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _http(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _compose_worker_healthcheck(port: int) -> int:
    """docker/compose.yaml's worker healthcheck, run as Docker would."""
    import os
    import subprocess
    import sys

    import yaml
    from helpers import REPO_ROOT

    compose = yaml.safe_load((REPO_ROOT / "docker" / "compose.yaml").read_text())
    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    env = {**os.environ, "CAD_NODE_WORKER_METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, *test[2:]], env=env, capture_output=True).returncode


def test_a_workers_metrics_count_its_jobs_and_a_rerun_via_the_api_reaches_orthanc(
    stack: Stack,
) -> None:
    """The worker serves its own /metrics; a re-analysis asked for over the API runs on it,
    and its SR reaches Orthanc naming the first SR as its predecessor."""
    from services import free_port, wait_until

    _require("redis-server")
    redis = Redis(stack.tmp)
    stack.start(redis)
    token = "e2e-token"
    stack.env.update(CAD_NODE_BROKER_URL=redis.url, CAD_NODE_HTTP_TOKEN=token)
    # Only the worker sends (the node's outbox sweep would otherwise take some of the sends).
    node_env = {**stack.env, "CAD_NODE_DELIVERY_SWEEP_SECONDS": "3600"}
    stack.start(serve(stack.data_dir, node_env))
    wait_listening(stack.node_port)
    metrics_port = free_port()
    worker_env = {**stack.env, "CAD_NODE_WORKER_METRICS_PORT": str(metrics_port)}
    stack.start(worker(stack.data_dir, worker_env))
    try:  # the pool process serves once it has started
        before = wait_until(lambda: _scrape(metrics_port), 60, "worker metrics", interval=0.5)
    except AssertionError:
        raise AssertionError(f"no worker metrics\n{stack.logs()}") from None
    assert all(name.startswith("cad_node_") for name, _ in before)
    assert _compose_worker_healthcheck(metrics_port) == 0
    assert _compose_worker_healthcheck(free_port()) != 0  # nothing listening
    destination = f"{Orthanc.AE}@127.0.0.1:{stack.orthanc.dicom_port}"

    def moved(samples: dict[Any, float], name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return samples.get(key, 0.0) - before.get(key, 0.0)

    study_id, views = _push_four_views(stack)
    uid = views[0].StudyInstanceUID
    _check_results(stack, views, _results_in_orthanc(stack, study_id, 6))
    after = _scrape(metrics_port)
    assert moved(after, "cad_node_jobs_total", outcome="done") == 1
    assert moved(after, "cad_node_jobs_total", outcome="failed") == 0
    assert moved(after, "cad_node_analysis_duration_seconds_count") == 1
    assert moved(after, "cad_node_analysis_duration_seconds_sum") > 0
    assert moved(after, "cad_node_delivery_attempts_total", destination=destination) == 6
    assert moved(after, "cad_node_delivery_failures_total", destination=destination) == 0

    http_port = int(node_env["CAD_NODE_HTTP_PORT"])
    path = f"/api/v1/studies/{uid}/reanalyse"
    assert _http(http_port, path, {})[0] == 401  # the token is needed
    status, text = _http(http_port, path, {"requested_by": "alice"}, token)
    assert status == 202, text
    queued = json.loads(text)
    assert queued["revision"] == 2 and queued["requested_by"] == "alice (api)"

    def both_done() -> list[JobRecord] | None:
        jobs = stack.jobs().jobs_of_study(uid)
        return jobs if [j.state for j in jobs] == ["done", "done"] else None

    results = _results_in_orthanc(stack, study_id, 12)
    first, second = wait_for(both_done, timeout=60)
    assert second.job_id == queued["job_id"] and second.requested_by == "alice (api)"
    assert second.worker and second.revision == 2
    new_sr = next(d for d in results if d.SOPInstanceUID == second.report_sop_instance_uid)
    predecessors = predecessor_uids(new_sr)
    assert predecessors == [first.report_sop_instance_uid]
    status, text = _http(http_port, f"/api/v1/studies/{uid}", token=token)
    events = [e for e in json.loads(text)["events"] if e["kind"] == "job.reanalysis_requested"]
    assert [e["detail"].endswith("requested by alice (api)") for e in events] == [True]

    after = _scrape(metrics_port)
    assert moved(after, "cad_node_jobs_total", outcome="done") == 2
    assert moved(after, "cad_node_analysis_duration_seconds_count") == 2
    assert moved(after, "cad_node_delivery_attempts_total", destination=destination) == 12

    # `cad-node reanalyse` with a broker queues the job for the workers.
    import subprocess

    from services import CAD_NODE

    cli = subprocess.run(
        [CAD_NODE, "reanalyse", uid, "--by", "bob"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == "job 3 (revision 3) queued for the workers"
    _results_in_orthanc(stack, study_id, 18)
    third = wait_for(
        lambda: [j for j in stack.jobs().jobs_of_study(uid) if j.state == "done"][2:],
        timeout=60,
    )
    assert third[0].requested_by == "bob (cli)" and third[0].worker
    after = _scrape(metrics_port)
    assert moved(after, "cad_node_jobs_total", outcome="done") == 3
    assert moved(after, "cad_node_analysis_duration_seconds_count") == 3
