"""The node's web server for real: HTTP on a free loopback port, a real study through the node."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from factories import four_views
from helpers import predecessor_uids, wait_for
from model_factory import tiny_model_folder
from prometheus_client.parser import text_string_to_metric_families
from receiver import start_receiver
from scu import associate, store
from services import Redis, free_port

from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord
from cad_node.cli import main

TOKEN = "s3cret-test-token"
PATIENT_DATA = ("Test^Synthetic", "SYNTH-001")  # what tests/factories.py puts in every image


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    """A real HTTP GET: status, content type and body (4xx/5xx included)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get_json(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    status, _, body = get(port, path, token)
    return status, json.loads(body)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own text parser."""
    status, content_type, body = get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("cad_node_"), family.name
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_health_and_metrics_are_open_the_api_needs_the_token(node_factory: Any) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    node = node_factory(http_port=free_port(), http_token=f"sha256:{digest}")
    port = node.web.port
    assert get_json(port, "/healthz") == (200, {"status": "ok"})
    status, ready = get_json(port, "/readyz")
    assert status == 200 and ready["ready"] is True
    assert set(ready["checks"]) == {"database", "spool", "scp"}  # no broker configured
    before = scrape(port)  # parses, every name cad_node_*
    assert not associate(node.scp.port, called="NOT-US").is_established
    wait_for(lambda: value(scrape(port), "cad_node_associations_total", outcome="rejected"))
    after = scrape(port)
    rejected = ("cad_node_associations_total", frozenset({("outcome", "rejected")}))
    assert after[rejected] - before.get(rejected, 0) == 1

    for path in ("/api/v1/studies", "/api/v1/summary", "/api/v1/events", "/api/v1/openapi.json"):
        status, _, body = get(port, path)
        assert (status, json.loads(body)) == (401, {"detail": "a valid bearer token is required"})
        assert get(port, path, "not-the-token")[0] == 401, path
        assert get(port, path, digest)[0] == 401, path  # the stored hash is not the token
        assert get(port, path, TOKEN)[0] == 200, path
    status, schema = get_json(port, "/api/v1/openapi.json", TOKEN)
    assert {"/api/v1/studies", "/api/v1/studies/{study_instance_uid}"} <= set(schema["paths"])
    assert get(port, "/api/v1/studies/1.2.3", TOKEN)[0] == 404
    assert get(port, "/docs")[0] == 404  # no interactive docs (they would load remote scripts)


def test_without_a_configured_token_the_api_is_closed(node_factory: Any) -> None:
    node = node_factory(http_port=free_port())
    assert get(node.web.port, "/api/v1/studies", "")[0] == 401
    assert get(node.web.port, "/api/v1/studies", "anything")[0] == 401
    assert get(node.web.port, "/healthz")[0] == 200


def test_readyz_fails_below_the_disk_reserve(node_factory: Any) -> None:
    node = node_factory(http_port=free_port(), min_free_mb=2**40)
    status, ready = get_json(node.web.port, "/readyz")
    assert status == 503 and ready["ready"] is False
    assert ready["checks"]["spool"]["ok"] is False
    assert "below the reserve" in ready["checks"]["spool"]["detail"]
    assert ready["checks"]["database"] == {"ok": True} and ready["checks"]["scp"] == {"ok": True}


def test_readyz_fails_when_the_spool_is_not_writable_or_the_scp_stops(node_factory: Any) -> None:
    node = node_factory(http_port=free_port())
    port = node.web.port
    incoming = node.settings.incoming_dir
    # Root ignores permission bits, so the folder where instances land becomes a plain file.
    shutil.rmtree(incoming)
    incoming.write_bytes(b"")
    status, ready = get_json(port, "/readyz")
    assert status == 503 and ready["checks"]["spool"]["ok"] is False
    incoming.unlink()
    incoming.mkdir()
    assert get(port, "/readyz")[0] == 200
    node.scp.stop()
    status, ready = get_json(port, "/readyz")
    assert status == 503 and ready["checks"]["scp"]["ok"] is False


def test_readyz_checks_the_broker_when_one_is_configured(node_factory: Any, tmp_path: Path) -> None:
    dead = node_factory(http_port=free_port(), broker_url=f"redis://127.0.0.1:{free_port()}/0")
    status, ready = get_json(dead.web.port, "/readyz")
    assert status == 503 and ready["checks"]["broker"]["ok"] is False
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (scripts/bootstrap --test installs it)")
    redis = Redis(tmp_path)
    redis.start()
    try:
        live = node_factory(http_port=free_port(), broker_url=redis.url, data_dir=tmp_path / "live")
        status, ready = get_json(live.web.port, "/readyz")
        assert status == 200 and ready["checks"]["broker"] == {"ok": True}
    finally:
        redis.stop()


def _cli_json(data_dir: Path, *args: str) -> Any:
    result = CliRunner(env={"CAD_NODE_DATA_DIR": str(data_dir)}).invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_a_study_moves_the_counters_and_the_api_shows_what_the_cli_shows(
    node_factory: Any, tmp_path: Path
) -> None:
    pacs = start_receiver("PACS")
    try:
        node = node_factory(
            pipeline=True,
            model=str(tiny_model_folder(tmp_path / "model")),
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
            http_port=free_port(),
            http_token=TOKEN,
        )
        port = node.web.port
        destination = f"PACS@127.0.0.1:{pacs.port}"
        before = scrape(port)
        views = four_views()
        uid = views[0].StudyInstanceUID
        assert store(node.scp.port, views) == [0, 0, 0, 0]
        jobs = JobRepository(node.engine)
        [job] = wait_for(
            lambda: [j for j in jobs.jobs_of_study(uid) if j.state == "done"], timeout=60
        )
        after = scrape(port)
    finally:
        pacs.stop()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    n_objects = len(job.deliveries)
    assert n_objects == 6  # two SRs and a heatmap per view
    status, study = get_json(port, f"/api/v1/studies/{uid}", TOKEN)
    assert status == 200
    stored_bytes = sum(i["bytes"] for i in study["instances"])
    assert moved("cad_node_instances_received_total", outcome="stored", status="0x0000") == 4
    assert moved("cad_node_received_bytes_total") == stored_bytes > 0
    assert moved("cad_node_associations_total", outcome="accepted") == 1
    assert moved("cad_node_associations_total", outcome="rejected") == 0
    assert moved("cad_node_studies_completed_total") == 1
    assert moved("cad_node_jobs_total", outcome="done") == 1
    assert moved("cad_node_jobs_total", outcome="failed") == 0
    assert moved("cad_node_analysis_duration_seconds_count") == 1
    assert moved("cad_node_analysis_duration_seconds_sum") > 0
    assert moved("cad_node_delivery_attempts_total", destination=destination) == n_objects
    assert moved("cad_node_delivery_failures_total", destination=destination) == 0
    assert value(after, "cad_node_queue_depth") == 0
    assert not [k for k in after if k[0] == "cad_node_outbox_backlog"]  # all delivered
    assert value(after, "cad_node_disk_free_bytes") > 0

    # The API returns exactly what `cad-node audit ... --json` prints.
    data_dir = node.settings.data_dir
    assert study == _cli_json(data_dir, "audit", "show", uid)
    assert get_json(port, "/api/v1/studies", TOKEN) == (
        200,
        _cli_json(data_dir, "audit", "studies"),
    )
    assert get_json(port, "/api/v1/summary", TOKEN) == (
        200,
        _cli_json(data_dir, "audit", "summary"),
    )
    events = get_json(port, "/api/v1/events?limit=20", TOKEN)
    assert events == (200, _cli_json(data_dir, "audit", "events", "--limit", "20"))
    assert get(port, f"/api/v1/studies/{uid}")[0] == 401

    # No patient data in anything the server answers.
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/studies",
        f"/api/v1/studies/{uid}",
        "/api/v1/summary",
        "/api/v1/events",
        "/api/v1/openapi.json",
    ):
        body = get(port, path, TOKEN)[2].decode()
        for text in PATIENT_DATA:
            assert text not in body, (path, text)


def test_the_token_is_never_shown(tmp_path: Path) -> None:
    result = CliRunner(env={"CAD_NODE_HTTP_TOKEN": TOKEN}).invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    assert json.loads(result.output)["http_token"] == "**********"


def test_the_compose_healthcheck_follows_readyz(node_factory: Any, tmp_path: Path) -> None:
    """docker/compose.yaml's node healthcheck, run as Docker would, against a real node."""
    import os
    import subprocess
    import sys

    import yaml
    from helpers import REPO_ROOT

    compose = yaml.safe_load((REPO_ROOT / "docker" / "compose.yaml").read_text())
    test = compose["services"]["node"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]

    def healthcheck(port: int) -> int:
        env = {**os.environ, "CAD_NODE_HTTP_PORT": str(port)}
        return subprocess.run([sys.executable, *test[2:]], env=env, capture_output=True).returncode

    ready = node_factory(http_port=free_port())
    assert healthcheck(ready.web.port) == 0
    full = node_factory(http_port=free_port(), min_free_mb=2**40, data_dir=tmp_path / "full")
    assert healthcheck(full.web.port) != 0
    assert healthcheck(free_port()) != 0  # nothing listening


def test_serve_says_clearly_when_the_http_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "CAD_NODE_DATA_DIR": str(tmp_path / "data"),
            "CAD_NODE_HOST": "127.0.0.1",
            "CAD_NODE_PORT": "0",
            "CAD_NODE_HTTP_PORT": str(taken.getsockname()[1]),
            "CAD_NODE_MODEL": str(tmp_path / "no-model"),
        }
        result = CliRunner(env=env).invoke(main, ["serve"])
    assert result.exit_code == 1
    assert "cannot listen for HTTP on 127.0.0.1:" in result.output
    assert "Traceback" not in result.output


def post_json(port: int, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    """A real HTTP POST of a JSON body: status and the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_a_rerun_via_the_api_and_the_cli_sends_new_srs_that_name_the_previous_ones(
    node_factory: Any, tmp_path: Path
) -> None:
    from pydicom import dcmread
    from receiver import dataset_bytes

    from cad_node.domain import MAMMO_CAD_SR

    pacs = start_receiver("PACS")
    model = str(tiny_model_folder(tmp_path / "model"))
    destinations = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    try:
        node = node_factory(
            pipeline=True,
            model=model,
            destinations=destinations,
            http_port=free_port(),
            http_token=TOKEN,
        )
        port = node.web.port
        views = four_views()
        uid = views[0].StudyInstanceUID
        path = f"/api/v1/studies/{uid}/reanalyse"
        assert post_json(port, path, {})[0] == 401
        assert post_json(port, "/api/v1/studies/1.2.3/reanalyse", {}, TOKEN)[0] == 404
        assert store(node.scp.port, views) == [0, 0, 0, 0]
        jobs = JobRepository(node.engine)

        def done(n: int) -> list[JobRecord]:
            found = jobs.jobs_of_study(uid)
            return found if len(found) == n and all(j.state == "done" for j in found) else []

        wait_for(lambda: done(1), timeout=60)
        assert post_json(port, path, {}, TOKEN) == (
            202,
            {"job_id": 2, "revision": 2, "requested_by": "api"},
        )
        wait_for(lambda: done(2), timeout=60)

        env = {
            "CAD_NODE_DATA_DIR": str(node.settings.data_dir),
            "CAD_NODE_MODEL": model,
            "CAD_NODE_DESTINATIONS": json.dumps(destinations),
        }
        result = CliRunner(env=env).invoke(main, ["reanalyse", uid, "--by", "carol"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("job 3 (revision 3): done; exam score ")
        shown = CliRunner(env=env).invoke(main, ["audit", "show", uid]).output
        assert "revision 3: done (attempts 1, worker " in shown
        assert "; requested by carol (cli)" in shown
        unknown = CliRunner(env=env).invoke(main, ["reanalyse", "1.2.3"])
        assert unknown.exit_code == 1 and "unknown study 1.2.3" in unknown.output
        all_jobs = done(3)
    finally:
        pacs.stop()

    assert [j.requested_by for j in all_jobs] == [None, "api", "carol (cli)"]
    assert len(pacs.received) == 3 * 6  # every job's objects, each once
    for previous, job in itertools.pairwise(all_jobs):
        sr_uid = job.report_sop_instance_uid
        [sr_file] = (node.settings.outbox_dir / f"job-{job.job_id}").glob(f"{MAMMO_CAD_SR}_*")
        sr = dcmread(sr_file)
        assert sr.SOPInstanceUID == sr_uid
        # the PACS holds exactly this SR, and it names the previous job's SR
        digest = hashlib.sha256(dataset_bytes(sr_file)).hexdigest()
        assert pacs.digests[pacs.received.index(sr_uid)] == digest
        predecessors = predecessor_uids(sr)
        assert predecessors == [previous.report_sop_instance_uid]
    status, study = get_json(port, f"/api/v1/studies/{uid}", TOKEN)
    asked = [e["detail"] for e in study["events"] if e["kind"] == "job.reanalysis_requested"]
    assert status == 200
    assert sorted(d.rsplit("requested by ", 1)[1] for d in asked) == ["api", "carol (cli)"]
