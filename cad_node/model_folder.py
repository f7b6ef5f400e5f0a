"""Model folders: what ``models/<name>/`` holds, how it is read and verified, and the default.

A model folder has ``weights.safetensors``, ``manifest.json`` and ``MODEL_CARD.md``. Training
writes folders (``cad_node.training.export``); the node and ``cad-node evaluate`` read them
here: the manifest checked for its keys, the weights against the manifest's sha256 before
use, ``models/DEFAULT`` naming the default, and the warning every output carries when a model
is not shown to be better than chance. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from cad_node.errors import ModelError
from cad_node.shipped import shipped_folder

MODELS_DIR = shipped_folder("models")
"""The checkout's ``models/`` (or the installed package's copy, with the default model only);
``models/DEFAULT`` names the default model's folder."""
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "name",
    "version",
    "architecture",
    "architecture_kwargs",
    "input",
    "class_names",
    "positive_class",
    "threshold",
    "weights_sha256",
    "training_data",
    "metrics",
    "created",
)


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


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check a model folder's manifest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"no {MANIFEST} in model folder {path}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable manifest in {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"manifest in {path} is not an object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"manifest in {path} lacks {missing}")
    return manifest


def load_model_folder(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
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
    if actual != manifest["weights_sha256"]:
        raise ModelError(
            f"weights of {folder} fail their checksum (manifest {manifest['weights_sha256'][:12]}, "
            f"file {actual[:12]})"
        )
    model = build_model(str(manifest["architecture"]), **dict(manifest["architecture_kwargs"]))
    try:
        model.load_state_dict(load_safetensors(data), strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelError(
            f"weights of {folder} do not fit {manifest['architecture']}: {exc}"
        ) from exc
    model.eval()
    return model, manifest


def validation_warning(manifest: dict[str, Any]) -> str | None:
    """Why a model's scores should not be trusted, from its manifest; None when validated.

    A model is validated when the 95% interval of its cross-validated AUC lies above 0.5.
    """
    label = f"model {manifest.get('name', '?')} {manifest.get('version', '?')}"
    if manifest.get("smoke_test"):
        return f"{label} is a smoke-test model; its scores mean nothing"
    auc = dict(manifest.get("metrics", {}).get("cross_validated", {}).get("auc", {}))
    if not auc.get("ci95"):
        return f"{label} has no cross-validated AUC in its manifest; its quality is unmeasured"
    low, high = (float(v) for v in auc["ci95"])
    if low > 0.5:
        return None
    return (
        f"{label}: cross-validated AUC {float(auc['value']):.2f} (95% CI {low:.2f}-{high:.2f}) "
        "is not shown to be better than chance; its scores carry no diagnostic information "
        "(see its MODEL_CARD.md)"
    )


def model_warning(path: Path | None = None) -> str | None:
    """:func:`validation_warning` of a model folder (default: ``models/DEFAULT``), read from
    its manifest without loading the weights; ModelError when there is no model there."""
    return validation_warning(read_manifest(path or default_model_path()))
