"""The ``cad-node`` command line."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import click

from cad_node import __version__
from cad_node.audit.repository import AuditRepository
from cad_node.errors import ConfigError
from cad_node.settings import Settings, load_settings


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # pynetdicom logs dataset contents at DEBUG and chatty lines at INFO; keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


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
    node = Node(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    click.echo(
        f"cad-node {__version__}: {settings.ae_title} listening on "
        f"{settings.host}:{node.scp.port}, data in {settings.data_dir} "
        f"(quiet period {settings.study_quiet_seconds:g} s). Ctrl-C stops.",
        err=True,
    )
    stop.wait()
    node.stop()


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
        click.echo(json.dumps(studies, indent=2))
        return
    if not studies:
        click.echo("no studies yet")
        return
    click.echo(f"{'STUDY INSTANCE UID':<64}  {'STATUS':<9}  {'N':>3}  VIEWS / MISSING")
    for s in studies:
        missing = f"  missing {','.join(s['missing_views'])}" if s["missing_views"] else ""
        click.echo(
            f"{s['study_instance_uid']:<64}  {s['status']:<9}  {s['n_instances']:>3}  "
            f"{','.join(s['views']) or '-'}{missing}"
        )


@audit.command("show")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def audit_show(ctx: Context, study_uid: str, as_json: bool) -> None:
    """Show one study: state, views, every instance and every event."""
    study = _repository(ctx).show_study(study_uid)
    if study is None:
        raise click.ClickException(f"unknown study {study_uid}")
    if as_json:
        click.echo(json.dumps(study, indent=2))
        return
    click.echo(f"study      {study['study_instance_uid']}")
    click.echo(f"status     {study['status']} (revision {study['revision']})")
    click.echo(f"views      {', '.join(study['views']) or '-'}")
    click.echo(f"missing    {', '.join(study['missing_views']) or '-'}")
    click.echo(f"received   {study['created_at']} .. {study['last_received_at']}")
    click.echo(f"completed  {study['completed_at'] or '-'}")
    click.echo(f"\ninstances ({len(study['instances'])}):")
    for i in study["instances"]:
        what = i["view"] or i["not_analysed_reason"] or i["reason"] or ""
        size = f"{i['bytes'] / 1e6:.1f} MB" if i["bytes"] else ""
        click.echo(
            f"  {i['received_at']}  {i['outcome']:<9} {i['status']}  {i['sop_instance_uid']}"
            f"  {what}  {size}"
        )
    click.echo(f"\nevents ({len(study['events'])}):")
    for e in study["events"]:
        click.echo(f"  {e['at']}  {e['level']:<7} {e['kind']:<20} {e['detail'] or ''}")


@audit.command("events")
@click.option("--level", type=click.Choice(["info", "warning", "error"]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def audit_events(ctx: Context, level: str | None, limit: int, as_json: bool) -> None:
    """Show the newest events (rejections, aborts, completions...)."""
    events = _repository(ctx).recent_events(limit, level)
    if as_json:
        click.echo(json.dumps(events, indent=2))
        return
    for e in events:
        click.echo(
            f"{e['at']}  {e['level']:<7} {e['kind']:<22} {e['calling_ae'] or '-':<16} "
            f"{e['study_instance_uid'] or '-'}  {e['detail'] or ''}"
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
