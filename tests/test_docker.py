"""What can be checked of the container files without a Docker engine (none runs here).

The compose file parses; every service command is a real cad-node command; every CAD_NODE_*
variable is a real setting with a valid value; every COPY source exists in the repository.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from helpers import REPO_ROOT

from cad_node.cli import main
from cad_node.settings import Settings

DOCKER = REPO_ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_node_workers_redis_postgres_orthanc(compose: dict[str, Any]) -> None:
    assert {"node", "worker", "worker-gpu", "redis", "postgres", "orthanc"} <= set(
        compose["services"]
    )


@pytest.mark.parametrize("service", ["node", "worker", "worker-gpu"])
def test_service_commands_exist(compose: dict[str, Any], service: str) -> None:
    command = compose["services"][service]["command"]
    assert command[0] == "cad-node"
    result = CliRunner().invoke(main, [*command[1:2], "--help"])
    assert result.exit_code == 0, result.output
    if "--queues" in command:
        queues = command[command.index("--queues") + 1].split(",")
        assert set(queues) <= {"inference", "delivery"}


@pytest.mark.parametrize("service", ["node", "worker", "worker-gpu"])
def test_service_environment_is_valid_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose["services"][service]["environment"]
    fields = {f"CAD_NODE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.broker_url.startswith("redis://")
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert [str(d) for d in settings.destinations] == ["ORTHANC@orthanc:4242"]
    orthanc_modalities = json.loads(
        compose["services"]["orthanc"]["environment"]["ORTHANC__DICOM_MODALITIES"]
    )
    assert orthanc_modalities["cadnode"] == [settings.ae_title, "node", settings.port]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_copies_existing_paths_and_runs_cad_node(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", text, flags=re.MULTILINE):
        for source in sources.split():
            assert (REPO_ROOT / source).exists(), source
    cmd = json.loads(re.search(r"^CMD (.+)$", text, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert cmd[0] == "cad-node"
    assert CliRunner().invoke(main, [cmd[1], "--help"]).exit_code == 0
    assert "torch==2.13.0" in text  # the version the tests run with
