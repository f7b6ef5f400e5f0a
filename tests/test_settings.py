import re
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
    assert s.allowed_calling_aes == ["MODALITY1", "PACS"]
    assert s.destinations == [Destination(ae_title="PACS", host="10.0.0.5", port=104)]
    assert s.device == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAD_NODE_AE_TITLE", "A" * 17),
        ("CAD_NODE_PORT", "70000"),
        ("CAD_NODE_DEVICE", "tpu"),
        ("CAD_NODE_DESTINATIONS", '[{"ae_title": "X"}]'),
    ],
)
def test_invalid_values_are_refused_with_config_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_the_config_file_lists_every_setting() -> None:
    """config/cad-node.toml documents each setting once, as a commented-out key."""
    text = (Path(__file__).resolve().parents[1] / "config" / "cad-node.toml").read_text()
    keys = re.findall(r"^# ([a-z_]+) = ", text, flags=re.MULTILINE)
    assert sorted(keys) == sorted(Settings.model_fields)
