import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from certs import TlsFiles
from click.testing import CliRunner

import cad_node
from cad_node.cli import LAZY_COMMANDS, main


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CAD_NODE_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "audit", "db", "config", "train", "evaluate"):
        assert f"\n  {command} " in result.output
    assert "not a diagnosis" in result.output


@pytest.mark.parametrize("args", [["--help"], ["db", "current"]])
def test_commands_that_need_no_model_do_not_import_torch(tmp_path: Path, args: list[str]) -> None:
    """torch, MONAI and scikit-learn take seconds to import; only training and analysis pay."""
    code = (
        "import sys\n"
        "from cad_node.cli import main\n"
        f"main({args!r}, standalone_mode=False)\n"
        "print(sorted(m for m in ('torch', 'monai', 'sklearn', 'cad_node.training') "
        "if m in sys.modules))\n"
    )
    checkout = str(Path(cad_node.__file__).resolve().parents[1])
    env = {**os.environ, "CAD_NODE_DATA_DIR": str(tmp_path / "data")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_a_lazy_command_is_listed_with_its_own_help_line_and_runs(
    runner: CliRunner, name: str
) -> None:
    lazy = LAZY_COMMANDS[name]
    command = getattr(importlib.import_module(lazy.module), lazy.attribute)
    assert command.get_short_help_str(1000) == lazy.short_help
    stand_in = click.Command(name, help=lazy.short_help)
    assert stand_in.get_short_help_str(40) == command.get_short_help_str(40)
    result = runner.invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: main {name} [OPTIONS]" in result.output and "--labels" in result.output


def test_config_show_reflects_environment(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAD_NODE_AE_TITLE", "SITE_CAD")
    data = json.loads(runner.invoke(main, ["config", "show"]).output)
    assert data["ae_title"] == "SITE_CAD"
    assert data["effective_database_url"].endswith("data/cad-node.db")


def test_invalid_setting_is_a_clear_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAD_NODE_PORT", "not-a-port")
    result = runner.invoke(main, ["config", "show"])
    assert result.exit_code != 0
    assert "invalid settings" in result.output and "port" in result.output


def test_audit_before_any_database_says_what_to_do(runner: CliRunner) -> None:
    result = runner.invoke(main, ["audit", "studies"])
    assert result.exit_code != 0
    assert "cad-node db upgrade" in result.output


def test_db_upgrade_then_empty_audit(runner: CliRunner) -> None:
    upgraded = runner.invoke(main, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "database at revision" in upgraded.output
    assert runner.invoke(main, ["audit", "studies"]).output.strip() == "no studies yet"
    assert json.loads(runner.invoke(main, ["audit", "studies", "--json"]).output) == []
    unknown = runner.invoke(main, ["audit", "show", "1.2.3"])
    assert unknown.exit_code != 0 and "unknown study" in unknown.output


def test_send_needs_a_database_then_reports_what_it_sent(runner: CliRunner) -> None:
    result = runner.invoke(main, ["send"])
    assert result.exit_code != 0 and "cad-node db upgrade" in result.output
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(main, ["send", "--retry-failed"])
    assert result.exit_code == 0, result.output
    assert "re-queued 0 failed delivery(ies)" in result.output
    assert "sent 0, to retry 0, failed 0" in result.output


@pytest.mark.parametrize("missing", ["CAD_NODE_TLS_CERT", "CAD_NODE_TLS_KEY", "CAD_NODE_TLS_CA"])
def test_serve_with_a_missing_tls_file_stops_with_one_line(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tls_files: TlsFiles,
    missing: str,
) -> None:
    files = {
        "CAD_NODE_TLS_CERT": tls_files.server.cert,
        "CAD_NODE_TLS_KEY": tls_files.server.key,
        "CAD_NODE_TLS_CA": tls_files.ca.bundle,
    }
    files[missing] = tmp_path / "gone.pem"
    monkeypatch.setenv("CAD_NODE_PORT", "0")
    monkeypatch.setenv("CAD_NODE_TLS_PORT", "2762")
    for name, path in files.items():
        monkeypatch.setenv(name, str(path))
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        f"Error: {missing}: cannot read {tmp_path / 'gone.pem'}: No such file or directory"
    ]


def test_serve_logs_a_peer_pdu_decode_failure_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom's DUL logs a traceback for each undecodable PDU; serve keeps the line only."""
    from cad_node.cli import _setup_logging

    _setup_logging("INFO")
    caplog.set_level(logging.INFO)
    try:
        raise AssertionError("bad item length")
    except AssertionError as exc:
        logging.getLogger("pynetdicom.dul").exception(exc)
    assert "Traceback" not in caplog.text
    assert "bad item length" in caplog.text
