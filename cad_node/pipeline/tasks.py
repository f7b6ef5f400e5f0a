"""Task bodies: analyse a job, deliver a job. Plain functions of (context, job id).

Idempotent: a task redelivered after a worker died finds the job's state in the database and
does only what is left; only the current attempt may record results, so a job's results are
recorded and sent once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from cad_node import metrics, phi
from cad_node.assembly import require_one_patient
from cad_node.audit.jobs import JobStart
from cad_node.delivery.outbox import DeliverySummary
from cad_node.domain import JobState, ResultObject
from cad_node.errors import CadNodeError, StaleJobError
from cad_node.inference.predict import analyse_study
from cad_node.pipeline.context import PipelineContext
from cad_node.reporting import (
    HEATMAP_SC,
    Algorithm,
    DocumentRef,
    build_result_objects,
)
from cad_node.results import ImageFailure

log = logging.getLogger(__name__)

MAX_ANALYSIS_ATTEMPTS = 3


def _read_sources(
    spool: Path,
    paths: list[str],
    study_uid: str,
    unreadable: list[ImageFailure],
    *,
    headers_only: bool = False,
) -> list[Dataset]:
    """Read stored instances; one that cannot be read is that image's error, not the job's."""
    read: list[Dataset] = []
    for relative in paths:
        sop_uid = Path(relative).stem  # the spool names each file after its instance
        try:
            ds = dcmread(spool / relative, stop_before_pixels=headers_only)
        except MemoryError:
            raise
        except Exception as exc:  # pydicom's messages may quote values: the type only
            problem = f"stored file cannot be read ({type(exc).__name__})"
        else:
            # pydicom returns what it could read of a cut file, maybe not even its UIDs
            if str(ds.get("SOPInstanceUID", "")) == sop_uid and "StudyInstanceUID" in ds:
                read.append(ds)
                continue
            problem = "stored file lacks its instance's UIDs (cut short?)"
        unreadable.append(ImageFailure(sop_uid, problem))
        log.warning("image %s of study %s not analysed: %s", sop_uid, study_uid, problem)
    return read


def _stale(job_id: int, attempt: int) -> None:
    """A newer attempt owns the job: this one's results or failure are discarded."""
    log.warning("job %d attempt %d went stale; its outcome is discarded", job_id, attempt)


def analyse(ctx: PipelineContext, job_id: int) -> JobState | None:
    """Run inference on the job's study and write the result objects to the outbox.

    Returns the job's new state, or None when there was nothing to do (already analysed,
    or this attempt went stale).
    """
    start = ctx.jobs.start_job(job_id, ctx.worker_name)
    if start is None:
        return None
    uid = start.study_instance_uid
    sources: list[Dataset] = []
    started = time.monotonic()
    try:
        model = ctx.model()
        spool = ctx.settings.spool_dir
        unreadable: list[ImageFailure] = []
        sources = _read_sources(spool, start.instance_paths, uid, unreadable)
        # Instances the model cannot analyse (tomosynthesis can be gigabytes) are reported
        # from their headers alone.
        sources += _read_sources(spool, start.other_paths, uid, unreadable, headers_only=True)
        # The C-STORE handler refuses another patient's instance; this catches any study
        # recorded before that check, or stored around it.
        require_one_patient(sources)
        analysis = analyse_study(uid, sources, model)
        analysis.errors.extend(unreadable)
        objects: list[ResultObject] = []
        if analysis.images or analysis.errors:
            previous = [
                DocumentRef(
                    p["study_instance_uid"],
                    p["series_instance_uid"],
                    p["sop_instance_uid"],
                    p["sop_class_uid"],
                )
                for p in start.predecessors
                if p["kind"] != HEATMAP_SC
            ]
            built = build_result_objects(
                analysis, sources, Algorithm.from_model(model), previous=previous
            )
            objects = ctx.outbox.write(job_id, built)
        state = ctx.jobs.finish_analysis(
            job_id,
            attempt=start.attempt,
            result=analysis.to_dict(),
            model=model.info.job_record(),
            objects=objects,
            destinations=[str(d) for d in ctx.settings.destinations],
        )
        metrics.ANALYSIS_SECONDS.observe(time.monotonic() - started)
        log.info(
            "job %d (study %s, revision %d): exam score %s, %d object(s)",
            job_id,
            uid,
            start.revision,
            analysis.exam_score,
            len(objects),
        )
        return state
    except StaleJobError:
        _stale(job_id, start.attempt)
        return None
    except CadNodeError as exc:  # our messages never carry patient data
        terminal = not exc.retryable or start.attempt >= MAX_ANALYSIS_ATTEMPTS
        if not _record_failure(ctx, start, str(exc), terminal=terminal):
            return None
        if not terminal:
            raise
        return JobState.FAILED
    except Exception as exc:
        # A library's message may quote a patient's value (pydicom: "Unable to convert
        # '<birth date>' to 'DA'"): record where it failed and which elements are invalid.
        terminal = start.attempt >= MAX_ANALYSIS_ATTEMPTS
        error = f"internal error: {phi.describe_exception(exc)}"
        invalid = phi.invalid_values(sources)
        if invalid:
            error += f"; invalid values in the study: {'; '.join(invalid)}"
        if not _record_failure(ctx, start, error, terminal=terminal):
            return None
        log.debug("job %d traceback:\n%s", job_id, phi.traceback_text(exc))
        if not terminal:
            raise CadNodeError(error, retryable=True) from None
        return JobState.FAILED


def _record_failure(ctx: PipelineContext, start: JobStart, error: str, *, terminal: bool) -> bool:
    """Record a failed attempt and log it; False when the attempt went stale meanwhile."""
    if not ctx.jobs.fail_job(start.job_id, error, attempt=start.attempt, terminal=terminal):
        _stale(start.job_id, start.attempt)
        return False
    log.error("job %d (study %s) failed: %s", start.job_id, start.study_instance_uid, error)
    return True


def deliver(ctx: PipelineContext, job_id: int | None = None) -> DeliverySummary:
    """Send what is due (of one job, or everything due); retries follow the outbox policy."""
    return ctx.outbox.deliver_due(job_id=job_id)


def run_job(ctx: PipelineContext, job_id: int) -> None:
    """Analyse (retrying retryable failures with backoff) then deliver: the embedded path."""
    state: JobState | None = None
    for attempt in range(MAX_ANALYSIS_ATTEMPTS):
        try:
            state = analyse(ctx, job_id)
            break
        except Exception:  # recorded by analyse(); retry after a pause
            time.sleep(2**attempt)
    if state == JobState.DELIVERING:
        deliver(ctx, job_id)
