import json
import logging
from pathlib import Path

import pytest
from certs import TlsFiles
from click.testing import CliRunner

from cad_node.cli import main


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CAD_NODE_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "audit", "db", "config"):
        assert command in result.output
    assert "not a diagnosis" in result.output


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
