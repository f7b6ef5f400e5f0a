"""Folders that ship with the code: the audit database's migrations and the default model.

They sit at the top of the checkout (``migrations/``, ``models/``); a wheel carries them
inside the package (``cad_node/migrations``, ``cad_node/models``; see ``setup.py``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """The installed package's ``name`` folder (from a wheel), else the checkout's."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name
