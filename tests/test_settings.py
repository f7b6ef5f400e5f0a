import re
import subprocess
import sys
from pathlib import Path

import pytest

from cad_node.errors import ConfigError
from cad_node.settings import Destination, Settings, load_settings


def test_defaults_without_file_or_environment() -> None:
    s = load_settings()
    assert s.ae_title == "CADNODE"
    assert s.port == 11112
    assert s.broker_url == ""
    assert s.allowed_calling_aes == []
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_database_url.endswith("var/cad-node/cad-node.db")


def test_file_overrides_defaults_and_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('ae_title = "FROMFILE"\nport = 2000\nstudy_quiet_seconds = 5\n')
    monkeypatch.setenv("CAD_NODE_PORT", "3000")
    s = load_settings(cfg)
    assert (s.ae_title, s.port, s.study_quiet_seconds) == ("FROMFILE", 3000, 5.0)


def test_default_config_file_is_read_from_config_folder(tmp_path: Path) -> None:
    # conftest chdirs into tmp_path
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cad-node.toml").write_text('ae_title = "SITEAE"\n')
    assert load_settings().ae_title == "SITEAE"


def test_list_and_json_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAD_NODE_ALLOWED_CALLING_AES", "MODALITY1, PACS ,")
    monkeypatch.setenv(
        "CAD_NODE_DESTINATIONS", '[{"ae_title": "PACS", "host": "10.0.0.5", "port": 104}]'
    )
    monkeypatch.setenv("CAD_NODE_DEVICE", "cpu")
    s = load_settings()
    assert [str(p) for p in s.allowed_calling_aes] == ["MODALITY1", "PACS"]
    assert s.destinations == [Destination(ae_title="PACS", host="10.0.0.5", port=104)]
    assert s.device == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAD_NODE_AE_TITLE", "A" * 17),
        ("CAD_NODE_PORT", "70000"),
        ("CAD_NODE_DEVICE", "tpu"),
        ("CAD_NODE_DESTINATIONS", '[{"ae_title": "X"}]'),
        ("CAD_NODE_DESTINATIONS", '[{"ae_title": "X", "host": "h", "port": 1, "tls_ca": "c"}]'),
        ("CAD_NODE_ALLOWED_CALLING_AES", "MG@10.0.0.0/33"),
        ("CAD_NODE_ALLOWED_CALLING_AES", "MG@"),
        ("CAD_NODE_TLS_PORT", "2762"),  # without certificate and key
        ("CAD_NODE_TLS_ONLY", "true"),  # without a TLS port
    ],
)
def test_invalid_values_are_refused_with_config_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_calling_aes_pinned_to_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CAD_NODE_ALLOWED_CALLING_AES", "MG1@10.1.2.3, PACS@10.9.0.0/16,WS@ws.local,X"
    )
    rules = load_settings().allowed_calling_aes
    assert [(r.ae_title, r.host) for r in rules] == [
        ("MG1", "10.1.2.3"),
        ("PACS", "10.9.0.0/16"),
        ("WS", "ws.local"),
        ("X", None),
    ]
    assert [str(r.network) for r in rules] == ["10.1.2.3/32", "10.9.0.0/16", "None", "None"]
    monkeypatch.delenv("CAD_NODE_ALLOWED_CALLING_AES")
    table = Settings(allowed_calling_aes=[{"ae_title": "MG1", "host": "::1"}, "PACS"])
    assert [str(r) for r in table.allowed_calling_aes] == ["MG1@::1", "PACS"]


def test_tls_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAD_NODE_TLS_PORT", "2762")
    monkeypatch.setenv("CAD_NODE_TLS_CERT", str(tmp_path / "server.pem"))
    monkeypatch.setenv("CAD_NODE_TLS_KEY", str(tmp_path / "server.key"))
    monkeypatch.setenv("CAD_NODE_TLS_CA", "")
    monkeypatch.setenv("CAD_NODE_TLS_ONLY", "true")
    monkeypatch.setenv(
        "CAD_NODE_DESTINATIONS",
        '[{"ae_title": "PACS", "host": "pacs", "port": 2762, "tls": true, "tls_ca": "ca.pem"}]',
    )
    s = load_settings()
    assert (s.tls_port, s.tls_cert, s.tls_ca, s.tls_only) == (
        2762,
        tmp_path / "server.pem",
        None,
        True,
    )
    (destination,) = s.destinations
    assert destination.tls and destination.tls_ca == Path("ca.pem")
    assert destination.tls_verify and destination.tls_check_hostname


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_the_config_file_lists_every_setting() -> None:
    """config/cad-node.toml documents each setting once, as a commented-out key."""
    text = (Path(__file__).resolve().parents[1] / "config" / "cad-node.toml").read_text()
    keys = re.findall(r"^# ([a-z_]+) = ", text, flags=re.MULTILINE)
    assert sorted(keys) == sorted(Settings.model_fields)


def test_loading_settings_does_not_import_dicom_or_torch() -> None:
    """Settings are loaded by every command; the DICOM and model stacks load only where used."""
    code = (
        "import sys\n"
        "import cad_node.settings\n"
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"
