"""Where model folders are, how their weights are verified and loaded, and the default.

Torch is imported only to load weights, so reading a manifest (the web console, start-up
warnings) stays light.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from cad_node.errors import ModelError
from cad_node.model_folder.manifest import Manifest, read_manifest, validation_warning
from cad_node.shipped import shipped_folder

if TYPE_CHECKING:
    from torch import nn

MODELS_DIR = shipped_folder("models")
"""The checkout's ``models/`` (or the installed package's copy, with the default model only);
``models/DEFAULT`` names the default model's folder."""
WEIGHTS = "weights.safetensors"
CARD = "MODEL_CARD.md"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_path(models_dir: Path = MODELS_DIR) -> Path:
    """The folder named by ``models/DEFAULT``; a clear error when no model is installed."""
    pointer = models_dir / "DEFAULT"
    if not pointer.is_file():
        raise ModelError(
            f"no model installed: {pointer} does not exist. Train and export one with "
            "`cad-node train`, or pass --model PATH / set CAD_NODE_MODEL."
        )
    return models_dir / pointer.read_text().strip()


def load_model_folder(path: Path | str) -> tuple[nn.Module, Manifest]:
    """Build the model of a folder in eval mode after verifying its weights' sha256."""
    from safetensors.torch import load as load_safetensors

    from cad_node.training.architectures import build_model  # the network definitions

    folder = Path(path)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"no {WEIGHTS} in model folder {folder}")
    data = weights.read_bytes()  # verified and loaded from the same bytes
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.weights_sha256:
        raise ModelError(
            f"weights of {folder} fail their checksum (manifest {manifest.weights_sha256[:12]}, "
            f"file {actual[:12]})"
        )
    model = build_model(manifest.architecture, **manifest.architecture_kwargs)
    try:
        model.load_state_dict(load_safetensors(data), strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelError(f"weights of {folder} do not fit {manifest.architecture}: {exc}") from exc
    model.eval()
    return model, manifest


def model_warning(path: Path | None = None) -> str | None:
    """:func:`validation_warning` of a model folder (default: ``models/DEFAULT``), read from
    its manifest without loading the weights; ModelError when there is no model there."""
    return validation_warning(read_manifest(path or default_model_path()))
