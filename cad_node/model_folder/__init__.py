"""Model folders: what ``models/<name>/`` holds, how it is read and verified, and the default.

A model folder has ``weights.safetensors``, ``manifest.json`` and ``MODEL_CARD.md``. Training
writes folders (``cad_node.training.export``, through :class:`Manifest`); the node and
``cad-node evaluate`` read them here: the manifest validated as one typed value, the weights
checked against its sha256 before use, ``models/DEFAULT`` naming the default, and the warning
every output carries when a model is not shown to be better than chance. Nothing is
downloaded at run time.

- ``manifest.py``: :class:`Manifest` (typed, validated, frozen), read and written; the
  validation warning.
- ``folder.py``: the models directory, the default model, sha256-verified loading.
- ``info.py``: :class:`ModelInfo`, the model's identity as every output gives it.
"""

from cad_node.model_folder.folder import (
    CARD,
    MODELS_DIR,
    WEIGHTS,
    default_model_path,
    load_model_folder,
    model_warning,
    sha256_file,
)
from cad_node.model_folder.info import ModelInfo, model_info
from cad_node.model_folder.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    InputSpec,
    LesionMapSpec,
    Manifest,
    Metrics,
    OutputKind,
    read_manifest,
    validation_warning,
)

__all__ = [
    "CARD",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODELS_DIR",
    "WEIGHTS",
    "InputSpec",
    "LesionMapSpec",
    "Manifest",
    "Metrics",
    "ModelInfo",
    "OutputKind",
    "default_model_path",
    "load_model_folder",
    "model_info",
    "model_warning",
    "read_manifest",
    "sha256_file",
    "validation_warning",
]
