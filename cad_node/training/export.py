"""Model folders: ``weights.safetensors`` + ``manifest.json`` + ``MODEL_CARD.md``.

The manifest is written through :class:`cad_node.model_folder.Manifest`; the node reads these
folders with :func:`cad_node.model_folder.load_model_folder`, which refuses weights whose
sha256 differs from the manifest.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cad_node.model_folder import (
    CARD,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    Manifest,
    sha256_file,
)


def _fmt_metric(entry: Mapping[str, Any]) -> str:
    lo, hi = entry.get("ci95", [float("nan"), float("nan")])
    return f"{entry['value']:.3f} (95% CI {lo:.3f}-{hi:.3f})"


def model_card(manifest: Mapping[str, Any]) -> str:
    """Markdown model card from a manifest."""
    metrics = manifest["metrics"]
    data = manifest["training_data"]
    rows = "\n".join(
        f"| {name} | {_fmt_metric(entry)} |"
        for name, entry in metrics.get("cross_validated", {}).items()
    )
    smoke = (
        "\n> **Smoke-test model** (`--fast`): tiny network, few images, one epoch. "
        "It exists to test the pipeline and must never be used on patients.\n"
        if manifest.get("smoke_test")
        else ""
    )
    params = manifest.get("parameters")
    params_text = f"{params:,}" if isinstance(params, int) else "?"
    size = manifest["input"]["size"]
    shape = f"{size[0]}x{size[1]}"
    spacing = f"{float(manifest['input']['spacing_mm']):.3g}"
    training = manifest.get("training", {})
    folds = metrics.get("fold_aucs") or []
    fold_line = f"\nPer-fold AUC: {', '.join(f'{float(a):.3f}' for a in folds)}.\n" if folds else ""
    reproduce = (
        f"\n## Reproduce\n```\n{training['command']}\n```\n"
        f"{training.get('seconds_per_epoch', '?')} s per epoch on all images on the machine "
        "that made it.\n"
        if training.get("command")
        else ""
    )
    mias = "mini-MIAS" in str(data.get("description", ""))
    lesion = manifest.get("output") == "score+lesion_map"
    limitation = (
        "- Trained on digitised screen-film MLO views (mini-MIAS, "
        f"{float(manifest['input']['spacing_mm']) * 1000:.0f} µm/pixel as input),\n  a small "
        "data set from one UK centre in the early 1990s. **Not validated on full-field\n  "
        "digital mammograms**, on CC views, or on any other population; expect the "
        "performance to differ.\n"
        if mias
        else "- Validated only by cross-validation on its own training data set; not on "
        "other scanners, views or populations.\n"
    )
    citation = (
        "\n## Citation\nJ Suckling et al (1994): The Mammographic Image Analysis Society "
        "Digital Mammogram Database.\nExcerpta Medica. International Congress Series 1069 "
        "pp375-378.\n"
        if mias
        else ""
    )
    auc = metrics.get("cross_validated", {}).get("auc", {})
    lo = auc.get("ci95", [0.0])[0]
    chance = (
        "\n> **Not better than chance**: the 95% CI of the cross-validated AUC includes 0.5. "
        "Its scores carry no diagnostic information: use it to exercise the pipeline, never to "
        "read a mammogram.\n"
        if auc and not lo > 0.5
        else ""
    )
    lesion_map = manifest.get("lesion_map", {})
    map_name = (
        lesion_map.get("channels", ["?"])[int(lesion_map.get("channel", 0))] if lesion else ""
    )
    what = (
        "Lesion detector and breast classifier for screening mammography: a map of where "
        f"findings ({map_name}) may be, its local maxima as detections, and a score per breast "
        f"(**{manifest['positive_class']}** vs **{manifest['class_names'][0]}**)"
        if lesion
        else "Binary image classifier for screening mammography: "
        f"**{manifest['positive_class']}** vs **{manifest['class_names'][0]}** per image"
    )
    lesion_lines = ""
    if lesion:
        comb = manifest.get("breast_combiner", {})
        training_info = manifest.get("training", {})
        tail = int(training_info.get("tail_stages", 0))
        heads = int(training_info.get("heads", 1))
        frozen = f"frozen except its {tail} deepest stage(s)" if tail else "frozen"
        if heads > 1:
            frozen += f"; {heads} lesion heads trained with other seeds, maps averaged" + (
                ", each head with its own fine-tuned copy of those stages" if tail else ""
            )
        lesion_lines = (
            f"- Backbone: {training_info.get('backbone', 'EfficientNet-Lite0')}; {frozen}. A "
            "fully convolutional lesion head gives maps (any abnormality, malignant) at stride "
            f"{lesion_map.get('stride')}, trained on the lesion discs of `mias_abnormalities.csv` "
            f"plus the image labels; the {map_name} map scores a film.\n"
            "- Breast score: logistic regression on the film's logit"
            + (" and the logit of the same woman's other breast" if comb.get("use_other") else "")
            + ", fitted on out-of-fold logits.\n"
        )
    froc = metrics.get("froc")
    froc_line = ""
    if froc:
        pairs = ", ".join(
            f"{float(sv):.2f} at {float(fp):g}"
            for fp, sv in zip(froc["fp_per_image"], froc["sensitivity"], strict=True)
        )
        froc_line = (
            f"\nFROC of the out-of-fold detections over {froc['n_lesions']} annotated lesions "
            f"(sensitivity at false positives per image): {pairs}.\n"
        )
    repeats = metrics.get("repeat_aucs") or []
    repeat_line = (
        f"\nAUC over {len(repeats)} repeats with other training seeds: "
        + ", ".join(f"{float(a):.3f}" for a in repeats)
        + ".\n"
        if len(repeats) > 1
        else ""
    )
    resolution = (
        "- Detections come on a 16-pixel grid: small or faint calcification clusters are often "
        "missed."
        if lesion
        else "- Whole-image classification at low resolution: microcalcifications are largely "
        "invisible."
    )
    return f"""# {manifest["name"]} {manifest["version"]}
{smoke}
{what}. Output is decision support for a radiologist, **not a diagnosis**.

## Model
- Architecture: `{manifest["architecture"]}` ({params_text} parameters),
  kwargs `{json.dumps(manifest["architecture_kwargs"])}`
{lesion_lines}- Input: {spacing} mm/pixel, {shape} pixels, through `cad_node.inference.preprocess`
- Operating threshold on the {"breast probability" if lesion else "sigmoid output"}: \
{manifest["threshold"]:.4f} (Youden's J on out-of-fold cross-validation predictions)
- Final weights: retrained on all training images with the cross-validated recipe; the
  metrics below are those of the cross-validated fold models, not of these exact weights.

## Training data
- {data.get("description", "")}
- Images: {data.get("n_images")} from {data.get("n_patients")} patients; positives:
  {data.get("n_positive")}
- Licence: {data.get("licence", "see the data set's own terms")}

## Cross-validated performance
{metrics.get("protocol", "")}

| metric | value |
|---|---|
{rows}
{fold_line}{froc_line}{repeat_line}{chance}
## Intended use
Research and development of the cad-node pipeline: a second reader's prompt on screening
mammograms (digitised film), for a radiologist who makes every decision. Decision support, not
a diagnosis; not validated on digital mammograms.

## Limitations
{limitation}{resolution}
- Confidence intervals are wide because the data set is small.
- Decision support, not a diagnosis; not a medical device.
{reproduce}{citation}"""


def export_model_folder(
    model: nn.Module,
    out_dir: Path,
    manifest: Mapping[str, Any],
) -> Path:
    """Write weights, manifest (with sha256 and creation time) and model card into ``out_dir``.

    The manifest is validated as a :class:`Manifest` before anything is written, so a folder
    written here always reads back; ModelError names a bad or missing field.
    """
    unchecked = {
        "format_version": FORMAT_VERSION,
        "weights_sha256": "0" * 64,  # the real values once the weights are written
        "created": "-",
        **manifest,
    }
    Manifest.from_dict(unchecked, source="manifest to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    weights.chmod(0o644)  # safetensors creates it owner-only; a service user must read it
    full = dict(manifest)
    full["format_version"] = FORMAT_VERSION
    full["weights_sha256"] = sha256_file(weights)
    full["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    full.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    written = Manifest.from_dict(full, source="manifest to export")
    (out_dir / MANIFEST).write_text(written.to_json())
    (out_dir / CARD).write_text(model_card(written.to_dict()))
    return out_dir


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Sigmoid probabilities of a (N, 1, H, W) batch, in eval mode without gradients."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outs.append(torch.sigmoid(model(images[start : start + batch_size]).reshape(-1)))
    return torch.cat(outs) if outs else torch.empty(0)
