"""Locate independent DICOM peers. pynetdicom installs apps named like dcmtk's (storescu,
echoscu...) into the virtual environment, so a PATH lookup alone may find those instead."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.cache
def dcmtk_tool(name: str) -> str | None:
    """The path of dcmtk's ``name`` (checked by its version banner), or None."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        candidate = Path(folder) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            banner = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "$dcmtk:" in banner:
            return str(candidate)
    return None
