"""A loaded CAD model: verified weights, its preprocessing, scores and Grad-CAM heatmaps.

A model is a folder (``models/<name>/``: ``weights.safetensors``, ``manifest.json``,
``MODEL_CARD.md``) whose weights are checked against the manifest's sha256 before use. Nothing
is downloaded at run time; without an installed model the node says so plainly.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cad_node.breast_score import BreastCombiner
from cad_node.errors import ModelError
from cad_node.inference.preprocess import PreprocessConfig
from cad_node.model_folder import Manifest, ModelInfo, default_model_path, load_model_folder

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is present, else the CPU."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("CAD_NODE_DEVICE=cuda but no CUDA device is available")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def find_cam_layer(module: nn.Module, size: tuple[int, int], score_output: int = 0) -> str:
    """The last module (in execution order) with a spatial 4-D output: Grad-CAM's target.

    Found by one dry run, which also checks that the model's logits per image include
    ``score_output`` (the manifest's index of the positive class's score).
    """
    order: list[str] = []
    hooks = []
    for name, sub in module.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) >= 2:
                order.append(name)

        hooks.append(sub.register_forward_hook(hook))
    try:
        device = next(module.parameters()).device
        with torch.inference_mode():
            outputs = module(torch.zeros(1, 1, *size, device=device)).numel()
    finally:
        for h in hooks:
            h.remove()
    if not 0 <= score_output < outputs:
        raise ModelError(
            f"the model gives {outputs} output(s) per image; its manifest's score_output "
            f"{score_output} is not one of them"
        )
    if not order:
        raise ModelError("the model has no spatial layer for Grad-CAM")
    return order[-1]


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] (min to 0, max to 1); a flat map stays all zero.

    MONAI's default post-processing maps (min, max) to (1, 0), i.e. inverts the map.
    """
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1).values.reshape(-1, *[1] * (maps.ndim - 1))
    span = (flat.max(dim=1).values.reshape(low.shape) - low).clamp_min(1e-12)
    return ((maps - low) / span).clamp(0.0, 1.0)


@dataclass
class CadModel:
    """A model ready for inference on one device."""

    module: nn.Module
    manifest: Manifest
    device: torch.device
    path: Path
    cam_layer: str = field(default="")
    info: ModelInfo = field(init=False)
    """The model's identity as every output gives it, built once from the manifest."""
    _cam: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.info = ModelInfo.of(self.manifest)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def threshold(self) -> float:
        """Operating point: a score at or above it is flagged suspicious."""
        return self.info.threshold

    @property
    def positive_class(self) -> str:
        return self.manifest.positive_class

    @property
    def has_lesion_map(self) -> bool:
        """Whether the model outputs a lesion map (then no Grad-CAM is needed)."""
        return self.manifest.localises

    @property
    def combiner(self) -> BreastCombiner | None:
        """How a breast's score is made from its film logits (and the other breast's)."""
        return self.manifest.combiner

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model was trained with (input spacing and size)."""
        spec = self.manifest.input
        return PreprocessConfig(spacing_mm=spec.spacing_mm, size=spec.size)

    def _input(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _probabilities(logits: torch.Tensor) -> npt.NDArray[np.float32]:
        result: npt.NDArray[np.float32] = (
            torch.sigmoid(logits.reshape(-1)).detach().float().cpu().numpy()
        )
        return result

    def scores(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probability of the positive class for a (N, 1, H, W) batch."""
        with torch.inference_mode():
            logits = self.module(self._input(batch))
        return self._probabilities(logits.reshape(len(batch), -1)[:, self.manifest.score_output])

    def lesion_maps(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Image logits (N,), lesion probability maps (N, h, w) at the map's stride and
        breast masks (N, h, w) of a lesion model, from one forward pass."""
        channel = self.manifest.lesion.channel
        module: Any = self.module
        with torch.inference_mode():
            maps, mask = module.lesion_maps(self._input(batch))
            logits = module.pool(maps, mask)[:, channel]
            prob = torch.sigmoid(maps[:, channel]) * mask
        return (
            logits.float().cpu().numpy(),
            prob.float().cpu().numpy(),
            mask.cpu().numpy().astype(bool),
        )

    def scores_and_heatmaps(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Scores and heatmaps of the positive output from one forward pass.

        Heatmaps are (N, H, W) on the model grid in [0, 1]: a lesion model's probability map
        (zero outside the breast), otherwise Grad-CAM (MONAI) scaled to [0, 1]. The score
        comes from the same forward pass.
        """
        if self.has_lesion_map:
            logits, prob, _ = self.lesion_maps(batch)
            maps = self.map_on_model_grid(prob, (batch.shape[2], batch.shape[3]))
            return self._probabilities(torch.from_numpy(logits)), maps
        x = self._input(batch)
        cam = self._gradcam()
        with torch.enable_grad(), warnings.catch_warnings():
            # Expected: the graph is re-rooted at the target layer (see _gradcam), so the
            # full backward hook fires with respect to module outputs only.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            maps = cam(x=x, class_idx=self.manifest.score_output)
            logit = cam.nn_module.score  # the score_output column of the logits
        self.module.zero_grad(set_to_none=True)
        heat: npt.NDArray[np.float32] = maps[:, 0].detach().float().cpu().numpy()
        if logit is not None:
            return self._probabilities(logit), heat
        return self.scores(batch), heat

    def map_on_model_grid(
        self, prob: npt.NDArray[np.float32], shape: tuple[int, int]
    ) -> npt.NDArray[np.float32]:
        """Lesion maps (N, h, w) resampled (bilinear) to the model grid (N, H, W)."""
        up = torch.nn.functional.interpolate(
            torch.from_numpy(prob)[:, None], scale_factor=self.map_stride, mode="bilinear"
        )
        out: npt.NDArray[np.float32] = up[:, 0, : shape[0], : shape[1]].numpy()
        return out

    @property
    def detection_threshold(self) -> float:
        """Lesion-map score from which a local maximum is reported as a detection."""
        return self.manifest.lesion.detection_threshold

    @property
    def map_stride(self) -> int:
        """Model pixels per lesion-map cell."""
        return self.manifest.lesion.stride

    def _gradcam(self) -> Any:
        """MONAI's GradCAM for this model, made once (it registers hooks on the module).

        Grad-CAM needs gradients from the output down to the target layer only. The target
        layer's output is made the root of the autograd graph (while gradients are enabled) and
        the weights are frozen, so the backward pass stops there instead of running through the
        whole network: the same maps and scores at a fraction of the cost.
        """
        if self._cam is None:
            from monai.visualize.class_activation_maps import GradCAM

            def reroot(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
                    return output.detach().requires_grad_(True)
                return None

            self.module.requires_grad_(False)
            target = dict(self.module.named_modules())[self.cam_layer]
            target.register_forward_hook(reroot, prepend=True)
            self._cam = GradCAM(
                nn_module=self.module, target_layers=self.cam_layer, postprocessing=_unit_range
            )
        return self._cam

    def heatmaps(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Grad-CAM heatmaps alone (see :meth:`scores_and_heatmaps`)."""
        return self.scores_and_heatmaps(batch)[1]


def load_cad_model(path: Path | None = None, device: str = "auto") -> CadModel:
    """Load and verify a model folder (default: ``models/DEFAULT``) onto ``device``."""
    folder = path or default_model_path()
    module, manifest = load_model_folder(folder)
    target = resolve_device(device)
    module = module.to(target).eval()
    module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = CadModel(module=module, manifest=manifest, device=target, path=Path(folder))
    if model.has_lesion_map:
        if not hasattr(module, "lesion_maps"):
            raise ModelError(f"{manifest.architecture} does not output a lesion map")
        log.info("model %s %s on %s (lesion map)", model.name, model.version, target)
    else:
        model.cam_layer = find_cam_layer(
            module, model.preprocess_config.size, model.manifest.score_output
        )
        log.info(
            "model %s %s on %s (Grad-CAM layer %s)",
            model.name, model.version, target, model.cam_layer,
        )  # fmt: skip
    if model.info.warning:
        log.warning("%s", model.info.warning)
    return model
