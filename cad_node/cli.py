"""The ``cad-node`` command line."""

from __future__ import annotations

import importlib
import json
import logging
import signal
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click

from cad_node import __version__
from cad_node.errors import ConfigError
from cad_node.settings import Settings, load_settings

if TYPE_CHECKING:  # pydicom and SQLAlchemy load when a command needs them, not for --help
    from cad_node.audit.repository import AuditRepository


class Context:
    """Lazily loaded settings shared by subcommands."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_file)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._settings


pass_context = click.make_pass_decorator(Context)


class LazyCommand(NamedTuple):
    """Where a command imported on first use lives, and its line in ``--help``."""

    module: str
    attribute: str
    short_help: str


LAZY_COMMANDS = {
    # torch, MONAI and scikit-learn: imported only when training or evaluating
    "train": LazyCommand(
        "cad_node.training.cli",
        "train_command",
        "Cross-validate architectures on the same patient folds; optionally export the best.",
    ),
    "evaluate": LazyCommand(
        "cad_node.training.cli",
        "evaluate_command",
        "Evaluate a model folder on a labelled data set (AUC with a patient-bootstrap 95% CI).",
    ),
}


class LazyGroup(click.Group):
    """A group that imports the commands of :data:`LAZY_COMMANDS` only when they are run
    (or their own help is asked for); its ``--help`` lists them without importing them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            lazy = LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(lazy.module), lazy.attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{lazy.module}.{lazy.attribute} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            lazy = None if name in self.commands else LAZY_COMMANDS.get(name)
            command: click.Command | None
            if lazy is not None:  # a stand-in that only carries the line, shortened as click does
                command = click.Command(name, help=lazy.short_help)
            else:
                command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file (default: config/cad-node.toml if present). "
    "Environment variables CAD_NODE_* override it.",
)
@click.version_option(__version__, prog_name="cad-node")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """cad-node: computer-aided detection for screening mammography over DICOM.

    Results are decision support for a radiologist, not a diagnosis.
    """
    ctx.obj = Context(config_file)
    # Archives such as CBIS-DDSM keep one-part patient names; highdicom warns about each copy.
    warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")


def _setup_logging(level: str) -> None:
    from cad_node import phi

    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Library warnings and log lines quote the values they complain of: withhold them.
    logging.captureWarnings(True)
    phi.guard_logs()
    # pynetdicom logs dataset contents at DEBUG and chatty lines at INFO; keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Its DUL logs a traceback for each PDU it cannot decode: a peer's bad bytes, not our bug.
    dul = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(f, WithoutTraceback) for f in dul.filters):
        dul.addFilter(WithoutTraceback())


class WithoutTraceback(logging.Filter):
    """Keeps a record's line, drops its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


@main.command()
@pass_context
def serve(ctx: Context) -> None:
    """Run the node: storage SCP, study assembly and the audit trail.

    Migrates the audit database first, removes partial transfers left by a crash and
    re-examines studies that were waiting for their quiet period. Stops on SIGINT/SIGTERM.
    """
    from cad_node.node import Node

    settings = ctx.settings
    _setup_logging(settings.log_level)
    try:
        node = Node(settings)  # a missing or unreadable TLS file is a ConfigError here
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except ConfigError as exc:  # e.g. the HTTP port is taken
        node.stop()
        raise click.ClickException(str(exc)) from exc
    web = f"; HTTP on {settings.http_host}:{node.web.port}" if node.web is not None else ""
    click.echo(
        f"cad-node {__version__}: {settings.ae_title} listening on "
        f"{node.scp.describe()}{web}, data in {settings.data_dir} "
        f"(quiet period {settings.study_quiet_seconds:g} s). Ctrl-C stops.",
        err=True,
    )
    _warn_about_model(settings)
    stop.wait()
    node.stop()


def _warn_about_model(settings: Settings) -> None:
    """Say at start-up, not only per job, when studies cannot be analysed or the model is
    not validated."""
    from cad_node.errors import ModelError
    from cad_node.model_folder import model_warning

    try:
        warning = model_warning(settings.model_path)
    except ModelError as exc:
        click.echo(f"WARNING: {exc} Studies are stored and assembled, not analysed.", err=True)
        return
    if warning:
        click.echo(f"WARNING: {warning}.", err=True)


@main.group()
def db() -> None:
    """Audit database maintenance."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_context
def db_upgrade(ctx: Context, revision: str) -> None:
    """Apply the Alembic migrations (serve does this at start too)."""
    from cad_node.audit.db import current_revision, upgrade

    url = ctx.settings.effective_database_url
    ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url, revision)
    click.echo(f"database at revision {current_revision(url)}")


@db.command("current")
@pass_context
def db_current(ctx: Context) -> None:
    """Print the database's migration revision."""
    from cad_node.audit.db import current_revision

    click.echo(current_revision(ctx.settings.effective_database_url) or "not migrated")


def _repository(ctx: Context) -> AuditRepository:
    from cad_node.audit.db import current_revision, make_engine
    from cad_node.audit.repository import AuditRepository

    url = ctx.settings.effective_database_url
    if current_revision(url) is None:
        raise click.ClickException(
            f"no audit database at {url}: run `cad-node db upgrade` or `cad-node serve` first"
        )
    return AuditRepository(make_engine(url))


@main.group()
def audit() -> None:
    """Inspect the audit trail: studies, instances, events."""


@audit.command("studies")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=50, show_default=True)
@pass_context
def audit_studies(ctx: Context, as_json: bool, limit: int) -> None:
    """List recent studies with their state and views."""
    studies = _repository(ctx).list_studies(limit)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in studies], indent=2))
        return
    if not studies:
        click.echo("no studies yet")
        return
    click.echo(f"{'STUDY INSTANCE UID':<64}  {'STATUS':<9}  {'N':>3}  VIEWS / MISSING")
    for s in studies:
        missing = f"  missing {','.join(s.missing_views)}" if s.missing_views else ""
        click.echo(
            f"{s.study_instance_uid:<64}  {s.state:<9}  {s.n_instances:>3}  "
            f"{','.join(s.views) or '-'}{missing}"
        )


@audit.command("show")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def audit_show(ctx: Context, study_uid: str, as_json: bool) -> None:
    """Show one study: state, views, every instance and every event."""
    from cad_node.audit.jobs import JobRepository
    from cad_node.audit.overview import study_detail

    repo = _repository(ctx)
    detail = study_detail(repo, JobRepository(repo.engine), study_uid)
    if detail is None:
        raise click.ClickException(f"unknown study {study_uid}")
    if as_json:
        click.echo(json.dumps(detail.to_dict(), indent=2))
        return
    study = detail
    click.echo(f"study      {study.study_instance_uid}")
    click.echo(f"status     {study.state} (revision {study.revision})")
    click.echo(f"views      {', '.join(study.views) or '-'}")
    click.echo(f"missing    {', '.join(study.missing_views) or '-'}")
    click.echo(f"received   {study.created_at.isoformat()} .. {study.last_received_at.isoformat()}")
    click.echo(f"completed  {study.completed_at.isoformat() if study.completed_at else '-'}")
    click.echo(f"\ninstances ({len(detail.instances)}):")
    for i in detail.instances:
        what = i.view or i.not_analysed_reason or i.reason or ""
        size = f"{i.bytes / 1e6:.1f} MB" if i.bytes else ""
        click.echo(
            f"  {i.received_at.isoformat()}  {i.outcome:<9} 0x{i.status:04X}  "
            f"{i.sop_instance_uid}  {what}  {size}"
        )
    click.echo(f"\njobs ({len(detail.jobs)}):")
    for job in detail.jobs:
        result = job.result or {}
        exam = result.get("exam_score")
        breasts = ", ".join(
            f"{lat} {b['score']:.3f}{' suspicious' if b['suspicious'] else ''}"
            for lat, b in sorted((result.get("breasts") or {}).items())
        )
        click.echo(
            f"  job {job.job_id} revision {job.revision}: {job.state}"
            f" (attempts {job.attempts}, worker {job.worker or '-'})"
            + (f"; requested by {job.requested_by}" if job.requested_by else "")
            + (f"; exam {exam:.3f}; {breasts}" if exam is not None else "")
            + (f"; error: {job.error}" if job.error else "")
        )
        if result.get("localised"):
            for image in result.get("images") or []:
                marks = "; ".join(
                    f"x {d['x']:.0f} y {d['y']:.0f} r {d['radius']:.0f} score {d['score']:.2f}"
                    for d in image.get("detections") or []
                )
                click.echo(f"    marks {image['view']:<6} {marks or 'none'}")
        for d in job.deliveries:
            status = "-" if d.last_status is None else f"0x{d.last_status:04X}"
            click.echo(
                f"    {d.kind:<13} -> {d.destination}: {d.state}"
                f" (attempts {d.attempts}, last status {status})"
                + (f" {d.last_error}" if d.last_error and d.state != "sent" else "")
            )
    click.echo(f"\nevents ({len(detail.events)}):")
    for e in detail.events:
        click.echo(f"  {e.at.isoformat()}  {e.level:<7} {e.kind:<20} {e.detail or ''}")


@audit.command("summary")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def audit_summary(ctx: Context, as_json: bool) -> None:
    """At a glance: studies, images received (last hour/day), jobs, deliveries, errors."""
    from cad_node.audit.jobs import JobRepository
    from cad_node.audit.models import utcnow
    from cad_node.audit.overview import summary as overview

    repo = _repository(ctx)
    summary = overview(repo, JobRepository(repo.engine), utcnow())
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return

    def line(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

    click.echo(f"studies             {line(summary.studies)}")
    click.echo(f"images, last hour   {line(summary.instances['last_hour'])}")
    click.echo(f"images, last day    {line(summary.instances['last_day'])}")
    click.echo(f"jobs                {line(summary.jobs)}")
    click.echo(f"deliveries          {line(summary.deliveries)}")
    click.echo(f"recent errors       {len(summary.recent_errors)}")
    for e in summary.recent_errors:
        click.echo(f"  {e.at.isoformat()}  {e.kind:<18} {e.study_instance_uid or '-'}  {e.detail}")


@audit.command("events")
@click.option("--level", type=click.Choice(["info", "warning", "error"]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def audit_events(ctx: Context, level: str | None, limit: int, as_json: bool) -> None:
    """Show the newest events (rejections, aborts, completions...)."""
    events = _repository(ctx).recent_events(limit, level)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in events], indent=2))
        return
    for e in events:
        click.echo(
            f"{e.at.isoformat()}  {e.level:<7} {e.kind:<22} {e.calling_ae or '-':<16} "
            f"{e.study_instance_uid or '-'}  {e.detail or ''}"
        )


@main.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("show")
@pass_context
def config_show(ctx: Context) -> None:
    """Print the effective settings (defaults < config file < environment) as JSON."""
    data = ctx.settings.model_dump(mode="json")
    data["effective_database_url"] = ctx.settings.effective_database_url
    click.echo(json.dumps(data, indent=2))


@config_group.command("hash-password")
@click.password_option(prompt="Console password", help="Read from the terminal if not given.")
def config_hash_password(password: str) -> None:
    """Print the value for CAD_NODE_HTTP_PASSWORD_HASH (PBKDF2-SHA256, salted)."""
    from cad_node.web.auth import hash_password

    click.echo(hash_password(password))


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model",
    "model_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model folder (default: CAD_NODE_MODEL, else the one models/DEFAULT names).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option(
    "--heatmaps",
    "heatmap_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a heatmap overlay PNG per analysed image into this folder.",
)
@click.option(
    "--dicom-out",
    "dicom_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the result objects the node would send (Mammography CAD SR, TID 1500 SR, "
    "heatmap secondary captures) into this folder.",
)
@click.option(
    "--group-by",
    type=click.Choice(["study", "patient"]),
    default="study",
    show_default=True,
    help="Group images into studies by StudyInstanceUID, or by PatientID without its "
    "side/view text (for archives like CBIS-DDSM that give each view its own study).",
)
@pass_context
def predict(
    ctx: Context,
    inputs: tuple[Path, ...],
    model_path: Path | None,
    as_json: bool,
    heatmap_dir: Path | None,
    dicom_dir: Path | None,
    group_by: str,
) -> None:
    """Analyse DICOM mammograms offline: per-breast and exam scores, heatmap overlays.

    INPUTS are files or folders (searched recursively). Decision support, not a diagnosis.
    """
    from cad_node.errors import ModelError
    from cad_node.inference.model import load_cad_model
    from cad_node.offline import OfflineOptions, analyse_offline, read_inputs
    from cad_node.results import DECISION_SUPPORT

    settings = ctx.settings
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_cad_model(model_path or settings.model_path, settings.device)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    found = read_inputs(inputs)
    for file in found.skipped:
        click.echo(f"skipping {file}: not a DICOM file", err=True)
    options = OfflineOptions(
        group_by="patient" if group_by == "patient" else "study",
        heatmap_dir=heatmap_dir,
        dicom_dir=dicom_dir,
    )
    studies = analyse_offline(found.datasets, model, options)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model.info.summary(),
                    "notice": DECISION_SUPPORT,
                    "studies": [s.to_dict() for s in studies],
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"model {model.name} {model.version} (threshold {model.threshold:.3f}); {DECISION_SUPPORT}"
    )
    if model.info.warning:
        click.echo(f"WARNING: {model.info.warning}.")
    for s in studies:
        exam = "-" if s.exam_score is None else f"{s.exam_score:.3f}"
        click.echo(
            f"\nstudy {s.study_instance_uid}: exam score {exam}"
            f"{'  SUSPICIOUS' if s.exam_suspicious else ''}"
        )
        for lat, b in sorted(s.breasts.items()):
            views = ", ".join(f"{v} {score:.3f}" for v, score in b.views.items())
            click.echo(f"  {lat}: {b.score:.3f}{'  SUSPICIOUS' if b.suspicious else ''}  ({views})")
        if s.missing_views:
            click.echo(f"  missing views: {', '.join(s.missing_views)}")
        for item in s.not_analysed:
            click.echo(f"  not analysed {item.sop_instance_uid}: {item.reason}")
        for failure in s.errors:
            click.echo(f"  error {failure.sop_instance_uid}: {failure.error}")
    if heatmap_dir is not None:
        click.echo(f"\nheatmap overlays in {heatmap_dir}")
    if dicom_dir is not None:
        click.echo(f"DICOM result objects in {dicom_dir}")


@main.command()
@click.option(
    "--queues",
    default="inference,delivery",
    show_default=True,
    help="Comma-separated queues to take work from (GPU workers: inference).",
)
@click.option("--concurrency", default=1, show_default=True, help="Worker processes.")
@pass_context
def worker(ctx: Context, queues: str, concurrency: int) -> None:
    """Run a Celery worker (needs CAD_NODE_BROKER_URL; shares database and data dir)."""
    settings = ctx.settings
    if not settings.broker_url:
        raise click.ClickException(
            "CAD_NODE_BROKER_URL is empty: `cad-node serve` runs jobs itself (embedded queue)"
        )
    _setup_logging(settings.log_level)
    from cad_node import tls
    from cad_node.audit.db import upgrade
    from cad_node.pipeline.celery_app import configure

    if "delivery" in queues.split(","):
        try:
            tls.check_destinations(settings.destinations)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    upgrade(settings.effective_database_url)
    app = configure(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"cad-node-{'-'.join(queues.split(','))}@%h",
        ]
    )


@main.command()
@click.option("--retry-failed", is_flag=True, help="Re-queue deliveries whose retries ran out.")
@pass_context
def send(ctx: Context, retry_failed: bool) -> None:
    """Send what waits in the outbox now (the node also retries on its own schedule)."""
    from cad_node.pipeline import tasks
    from cad_node.pipeline.context import PipelineContext

    engine = _repository(ctx).engine  # a clear error when there is no database yet
    pipeline = PipelineContext(ctx.settings, engine)
    try:
        if retry_failed:
            click.echo(f"re-queued {pipeline.deliveries.retry_failed()} failed delivery(ies)")
        summary = tasks.deliver(pipeline)
        click.echo(f"sent {summary.sent}, to retry {summary.retrying}, failed {summary.failed}")
    finally:
        pipeline.close()
        engine.dispose()


@main.command()
@click.argument("study_uid")
@click.option(
    "--by",
    "who",
    default=None,
    help="Who asks, for the audit log (default: the login name); recorded as 'NAME (cli)'.",
)
@pass_context
def reanalyse(ctx: Context, study_uid: str, who: str | None) -> None:
    """Analyse a complete study again: a new revision and job with the same images, whose SR
    references the previous one. With CAD_NODE_BROKER_URL a worker runs it; otherwise it runs
    here and its results are sent at once."""
    import getpass

    from cad_node.errors import ReanalysisRefusedError, UnknownStudyError
    from cad_node.pipeline import tasks
    from cad_node.pipeline.context import PipelineContext

    settings = ctx.settings
    engine = _repository(ctx).engine  # a clear error when there is no database yet
    pipeline = PipelineContext(settings, engine)
    try:
        by = f"{who or getpass.getuser()} (cli)"
        try:
            job_id, revision = pipeline.jobs.request_reanalysis(study_uid, by)
        except (UnknownStudyError, ReanalysisRefusedError) as exc:
            raise click.ClickException(str(exc)) from None
        if settings.broker_url:
            from cad_node.pipeline.celery_app import CeleryQueue

            CeleryQueue(settings).enqueue(job_id)
            click.echo(f"job {job_id} (revision {revision}) queued for the workers")
            return
        _setup_logging("WARNING")
        tasks.run_job(pipeline, job_id)
        job = next(j for j in pipeline.jobs.jobs_of_study(study_uid) if j.job_id == job_id)
        exam = (job.result or {}).get("exam_score")
        click.echo(
            f"job {job_id} (revision {revision}): {job.state}"
            + (f"; exam score {exam:.3f}" if exam is not None else "")
            + (f"; error: {job.error}" if job.error else "")
        )
        if job.state == "failed":
            raise SystemExit(1)
    finally:
        pipeline.close()
        engine.dispose()


@main.command()
@click.option(
    "--quiet-seconds",
    default=3.0,
    show_default=True,
    help="Quiet period for the demo's studies (the node's default is longer).",
)
@pass_context
def demo(ctx: Context, quiet_seconds: float) -> None:
    """Run the node on its embedded defaults and feed it the sample CBIS-DDSM exams.

    Sends both exams by C-STORE as a modality would, waits for the analysis, prints the
    per-breast scores and where the reports are, writes a heatmap montage, and stops.
    """
    from cad_node.demo import run_demo
    from cad_node.errors import ModelError
    from cad_node.model_folder import default_model_path

    settings = ctx.settings.model_copy(
        update={"host": "127.0.0.1", "port": 0, "study_quiet_seconds": quiet_seconds}
    )
    _setup_logging("WARNING")
    analyse = True
    if not settings.model:
        try:
            default_model_path()
        except ModelError:
            analyse = False
    raise SystemExit(run_demo(settings, click.echo, analyse=analyse))
