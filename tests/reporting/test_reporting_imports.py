"""Reporting reads results as plain values: importing it loads no model library."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_importing_reporting_does_not_import_torch() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    code = (
        "import sys\n"
        "import cad_node.reporting, cad_node.reporting.overlay, cad_node.results\n"
        "loaded = sorted(m for m in ('torch', 'monai', 'cad_node.inference') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
