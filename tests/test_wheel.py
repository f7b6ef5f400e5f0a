"""The node installed from its wheel, away from the checkout: migrate, predict, serve.

The wheel is built from a copy of the sources and installed into a fresh virtual
environment whose only other path is the test interpreter's site-packages (the
dependencies); every command runs from a folder outside the checkout without PYTHONPATH,
so the migrations and the default model must come from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from factories import mammogram, write
from helpers import REPO_ROOT, wait_for
from scu import associate

from cad_node import dicom_status

pytestmark = pytest.mark.slow
SOURCES = ("pyproject.toml", "setup.py", "README.md", "cad_node", "migrations")


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding the wheel, and a working folder outside the checkout."""

    venv: Path
    work: Path

    @property
    def cad_node(self) -> Path:
        return self.venv / "bin" / "cad-node"

    def env(self, **settings: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["CAD_NODE_DATA_DIR"] = str(self.work / "data")
        return env | settings

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args, cwd=self.work, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stderr
        return done


def _copy_sources(to: Path) -> None:
    """The files a build reads, without caches, and of ``models/`` only the default model."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    to.mkdir(parents=True)
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, to / name, ignore=ignore)
        else:
            shutil.copy2(source, to / name)
    default = (REPO_ROOT / "models" / "DEFAULT").read_text().strip()
    shutil.copytree(REPO_ROOT / "models" / default, to / "models" / default, ignore=ignore)
    shutil.copy2(REPO_ROOT / "models" / "DEFAULT", to / "models" / "DEFAULT")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    _copy_sources(root / "src")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "--no-index", "-q", "-w", str(root / "dist"), str(root / "src")],
        check=True,
        timeout=300,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies, as a site would have installed them: this interpreter's packages
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib) / "cad-node-dependencies.pth").write_text("\n".join(sorted(dependencies)))
    (wheel,) = (root / "dist").glob("cad_node-*.whl")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    subprocess.run([*install, "--no-index", "-q", str(wheel)], check=True, timeout=300)
    work = root / "work"
    work.mkdir()
    return Installed(venv, work)


def test_the_installed_package_and_its_folders_are_the_wheels(installed: Installed) -> None:
    code = (
        "import json, cad_node, cad_node.audit.db as db, cad_node.model_folder as m\n"
        "print(json.dumps([cad_node.__file__, str(db.MIGRATIONS_DIR), str(m.MODELS_DIR), "
        "str(m.default_model_path())]))"
    )
    done = installed.run(str(installed.venv / "bin" / "python"), "-c", code)
    paths = [Path(p) for p in json.loads(done.stdout)]
    package = paths[0].parent
    assert package.is_relative_to(installed.venv), paths
    assert paths[1:3] == [package / "migrations", package / "models"]
    assert (paths[3] / "weights.safetensors").is_file()
    assert not any(p.resolve().is_relative_to(REPO_ROOT) for p in paths)


def test_db_upgrade_from_the_wheel(installed: Installed) -> None:
    done = installed.run(str(installed.cad_node), "db", "upgrade")
    head = sorted((REPO_ROOT / "migrations" / "versions").glob("*.py"))[-1].name.split("_")[0]
    assert done.stdout.strip() == f"database at revision {head}"
    assert (installed.work / "data" / "cad-node.db").is_file()


def test_predict_from_the_wheel_uses_the_installed_default_model(installed: Installed) -> None:
    image = write(mammogram(rows=256, cols=192), installed.work / "images")
    done = installed.run(str(installed.cad_node), "predict", str(image), "--json")
    result = json.loads(done.stdout)
    default = (REPO_ROOT / "models" / "DEFAULT").read_text().strip()
    manifest = json.loads((REPO_ROOT / "models" / default / "manifest.json").read_text())
    assert (result["model"]["name"], result["model"]["version"]) == (
        manifest["name"],
        manifest["version"],
    )
    (study,) = result["studies"]
    assert study["breasts"]["L"]["score"] is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serving(installed: Installed) -> Iterator[tuple[int, int]]:
    """``cad-node serve`` from the wheel on free DICOM and HTTP ports; stopped by SIGTERM."""
    dicom_port, http_port = _free_port(), _free_port()
    env = installed.env(
        CAD_NODE_HOST="127.0.0.1",
        CAD_NODE_PORT=str(dicom_port),
        CAD_NODE_HTTP_HOST="127.0.0.1",
        CAD_NODE_HTTP_PORT=str(http_port),
    )
    process = subprocess.Popen(
        [installed.cad_node, "serve"],
        cwd=installed.work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield dicom_port, http_port
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "listening on" in stderr


def _echo(port: int) -> bool:
    assoc = associate(port)
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().get("Status") == dicom_status.SUCCESS)
    finally:
        assoc.release()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:  # not listening yet
        return False


def test_serve_from_the_wheel_answers_a_c_echo_and_readyz(serving: tuple[int, int]) -> None:
    dicom_port, http_port = serving
    assert wait_for(lambda: _echo(dicom_port), timeout=90, interval=0.5)
    assert wait_for(lambda: _ready(http_port), timeout=30, interval=0.5)
