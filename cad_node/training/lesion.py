"""Lesion-level training on frozen EfficientNet-Lite0 features, with the other breast.

Protocol (every number below comes from data split by patient):

1. Each film is preprocessed once at the model's spacing and size; the frozen ImageNet
   backbone's stride-16 and stride-32 features of the film and of up to three augmented versions
   (:data:`VARIANTS`: its top-bottom mirror, which keeps the chest wall where preprocessing puts
   it, and gamma / small rotation and zoom versions of both) are computed once and cached on
   disk. Only training films are ever seen in an augmented version.
2. The lesion head is trained on the lesion discs of ``mias_abnormalities.csv`` (cells inside a
   disc are lesion, the breast cells of normal films and outside the discs are background) plus
   the image labels through a top-k pool of the map (multiple-instance learning), on two maps:
   any abnormality and malignant. Films whose findings have no centre contribute their image
   label only. A film is scored by one map (by default the any-abnormality map, which learns
   from all lesions, also for the malignant task). Optionally the deepest backbone
   stages are then unfrozen, one stage at a time, each at a lower learning rate.
3. The breast score is a logistic regression on the film's image logit and the logit of the
   same woman's other breast, fitted on inner cross-validated logits of the training folds
   only; the operating threshold is chosen there too (Youden's J), never on the test fold.
4. Detections are local maxima of the test film's map; the FROC counts a lesion found when a
   detection's centre lies inside its circle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from cad_node.breast_score import BreastCombiner as Combiner
from cad_node.errors import InvalidDatasetError
from cad_node.lesion_map import detections_from_map
from cad_node.training import datasets as dsets
from cad_node.training import metrics as M
from cad_node.training.efficientnet_lite import WEIGHTS_FILE
from cad_node.training.lesion_net import (
    CHANNELS,
    STRIDE,
    HeadEnsemble,
    LesionHead,
    LiteLesionNet,
    OwnTail,
    breast_cells,
    merge_mirrored,
)

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Fold = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)
LESION_ARCHITECTURE = "lite0-lesion"
GLOBAL_ARCHITECTURE = "lite0-global"


@dataclass
class LesionConfig:
    """Settings of the lesion-level model family."""

    task: dsets.Task = "malignant"
    spacing_mm: float = 0.2
    size: tuple[int, int] = (1024, 768)
    folds: int = 5
    inner_folds: int = 3
    seed: int = 0
    repeats: int = 1
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    head_width: int = 32
    head: str = "conv"
    score_channel: str = "abnormal"
    """Map channel that scores a film: ``task`` (the task's own) or ``abnormal``."""
    top_k_fraction: float = 0.01
    dropout: float = 0.2
    pos_weight: float = 10.0
    min_lesion_radius: float = 12.0
    variants: int = 4
    mirror_tta: bool = False
    """Score films as the mean of their maps and their mirror's (needs ``variants`` >= 2)."""
    heads: int = 1
    """Lesion heads per fit, trained with other seeds; their maps are averaged."""
    fine: bool = False
    """The head also reads the stride-8 features (calcification scale)."""
    tail_stages: int = 0
    tail_epochs: int = 4
    bn_train: bool = False
    n_boot: int = 1000
    progress: bool = True
    fast: bool = False
    cache_dir: Path | None = None

    @property
    def channel(self) -> int:
        """Map channel that scores a film (0 abnormal, 1 malignant)."""
        if self.score_channel == "abnormal" or self.task == "abnormal":
            return CHANNELS.index("abnormal")
        return CHANNELS.index("malignant")

    @property
    def label_column(self) -> int:
        """Column of :attr:`FeatureSet.labels` that holds the task's targets."""
        return CHANNELS.index("malignant" if self.task == "malignant" else "abnormal")

    def net_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs of the exported :class:`LiteLesionNet`."""
        return {
            "channel": self.channel,
            "head_width": self.head_width,
            "head": self.head,
            "top_k_fraction": self.top_k_fraction,
            "dropout": self.dropout,
            "mirror_tta": self.mirror_tta,
            "heads": self.heads,
            "fine": self.fine,
            "own_tails": self.heads > 1 and self.tail_stages > 0,
        }


def fast_lesion_config(**overrides: Any) -> LesionConfig:
    """Smoke settings: small films, 2 folds, few epochs, one variant."""
    values: dict[str, Any] = {
        "size": (256, 192),
        "spacing_mm": 0.8,
        "folds": 2,
        "inner_folds": 2,
        "epochs": 2,
        "batch_size": 8,
        "variants": 1,
        "n_boot": 50,
        "fast": True,
        "min_lesion_radius": 8.0,
    }
    values.update(overrides)
    return LesionConfig(**values)


@dataclass
class FeatureSet:
    """Cached frozen features, targets and masks; axis 0 of the arrays is the variant."""

    s16: npt.NDArray[np.floating[Any]]
    s32: npt.NDArray[np.floating[Any]]
    mask: npt.NDArray[np.bool_]
    target: npt.NDArray[np.uint8]
    known: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int64]
    """(N, 2): abnormal, malignant."""
    lesions: list[list[dsets.LesionPoint]]
    other: npt.NDArray[np.int64]
    """Index of the same woman's other breast, -1 when there is none."""
    uncentred: npt.NDArray[np.int64]
    """Findings without a centre per film (left out of the FROC)."""
    s8: npt.NDArray[np.floating[Any]] | None = None
    """Stride-8 features (only for a head with ``fine``)."""
    s7in: npt.NDArray[np.floating[Any]] | None = None
    """Stage 6's output, the input of stage 7 (only when tail stages train)."""


def disc_targets(
    points: Sequence[dsets.LesionPoint], shape: tuple[int, int], min_radius: float
) -> npt.NDArray[np.uint8]:
    """(2, h, w) stride-16 targets: cells whose centre lies in a lesion disc (any, malignant)."""
    h, w = shape
    rows = (np.arange(h) + 0.5) * STRIDE - 0.5  # cell centres, in pixel-index coordinates
    cols = (np.arange(w) + 0.5) * STRIDE - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = np.zeros((2, h, w), np.uint8)
    for row, col, radius, malignant in points:
        inside = (rr - row) ** 2 + (cc - col) ** 2 <= max(radius, min_radius) ** 2
        out[0] |= inside
        if malignant:
            out[1] |= inside
    return out


def other_breast(samples: Sequence[dsets.Sample]) -> npt.NDArray[np.int64]:
    """For each sample, the index of the same patient's opposite-laterality film (or -1)."""
    by_patient: dict[tuple[str, str | None], int] = {}
    for i, s in enumerate(samples):
        by_patient.setdefault((s.patient_id, s.laterality), i)
    flip = {"L": "R", "R": "L"}
    out = np.full(len(samples), -1, np.int64)
    for i, s in enumerate(samples):
        if s.laterality in flip:
            out[i] = by_patient.get((s.patient_id, flip[s.laterality]), -1)
    return out


#: Films as the head sees them in training: (mirror top-bottom, gamma, rotation in degrees,
#: zoom). Variant 0 is the film itself, the only one ever scored; the others are augmentations
#: used for training films only. Mirroring keeps the chest wall where preprocessing puts it.
VARIANTS: tuple[tuple[bool, float, float, float], ...] = (
    (False, 1.0, 0.0, 1.0),
    (True, 1.0, 0.0, 1.0),
    (False, 0.8, 6.0, 1.08),
    (True, 1.25, -6.0, 0.93),
)


def _cache_key(samples: Sequence[dsets.Sample], cfg: LesionConfig, variant: int) -> str:
    items = [(s.sample_id, str(s.path), s.path.stat().st_size, s.laterality) for s in samples]
    blob = json.dumps(
        {
            "items": items,
            "spacing": cfg.spacing_mm,
            "size": cfg.size,
            "variant": VARIANTS[variant],
            "weights": WEIGHTS_FILE,
            "version": 2,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _affine(variant: int, shape: tuple[int, int]) -> tuple[npt.NDArray[np.float64], Any, float]:
    """Rotation matrix, centre and zoom of a variant on an image of ``shape``."""
    _, _, angle, zoom = VARIANTS[variant]
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = (np.array(shape, dtype=np.float64) - 1.0) / 2.0
    return rot, centre, zoom


def augment_image(image: npt.NDArray[np.float32], variant: int) -> npt.NDArray[np.float32]:
    """A (1, H, W) film as variant ``variant`` (see :data:`VARIANTS`)."""
    from scipy.ndimage import affine_transform

    mirror, gamma, angle, zoom = VARIANTS[variant]
    img = np.asarray(image[0], dtype=np.float32)
    if angle or zoom != 1.0:
        rot, centre, zoom = _affine(variant, img.shape)
        inverse = rot.T / zoom
        img = affine_transform(
            img, inverse, offset=centre - inverse @ centre, order=1, mode="constant", cval=0.0
        ).astype(np.float32)
    if gamma != 1.0:
        img = np.clip(img, 0.0, 1.0) ** gamma
    if mirror:
        img = img[::-1]
    return np.ascontiguousarray(img[None], dtype=np.float32)


def augment_points(
    points: Sequence[dsets.LesionPoint], variant: int, shape: tuple[int, int]
) -> list[dsets.LesionPoint]:
    """Lesions (row, col, radius, malignant) moved as :func:`augment_image` moves the film."""
    mirror, _, angle, zoom = VARIANTS[variant]
    out = list(points)
    if angle or zoom != 1.0:
        rot, centre, zoom = _affine(variant, shape)
        out = []
        for row, col, radius, malignant in points:
            r, c = zoom * rot @ (np.array([row, col]) - centre) + centre
            out.append((float(r), float(c), radius * zoom, malignant))
    if mirror:
        out = [(shape[0] - 1 - row, col, radius, m) for row, col, radius, m in out]
    return out


def build_features(
    samples: Sequence[dsets.Sample],
    lesions: Sequence[dsets.Lesion],
    finding_counts: dict[str, int],
    cfg: LesionConfig,
) -> FeatureSet:
    """Preprocess, extract (or load cached) frozen features, and build the targets.

    ``finding_counts`` (findings per film, with or without a centre) decides which abnormal
    films have known map targets: those whose every finding has a centre.
    """
    if not 1 <= cfg.variants <= len(VARIANTS):
        raise InvalidDatasetError(f"variants must be 1 to {len(VARIANTS)}")
    if cfg.mirror_tta and cfg.variants < 2:
        raise InvalidDatasetError("mirror test-time augmentation needs variants >= 2")
    points = dsets.lesion_points(samples, lesions, cfg.spacing_mm, cfg.size)
    centred: dict[str, int] = {}
    for les in lesions:
        centred[les.refnum] = centred.get(les.refnum, 0) + 1
    known = np.array(
        [
            s.label == "normal"
            or 0 < centred.get(s.sample_id, 0) == finding_counts.get(s.sample_id, 0)
            for s in samples
        ],
        dtype=bool,
    )
    labels = np.stack(
        [dsets.targets(samples, "abnormal"), dsets.targets(samples, "malignant")], axis=1
    )
    h16 = math.ceil(cfg.size[0] / STRIDE)
    w16 = math.ceil(cfg.size[1] / STRIDE)
    target = np.zeros((cfg.variants, len(samples), 2, h16, w16), np.uint8)
    parts = cache_parts(cfg)
    arrays: dict[str, list[npt.NDArray[Any]]] = {part: [] for part in parts}
    for v in range(cfg.variants):
        for i, p in enumerate(points):
            pts = augment_points(p, v, cfg.size)
            target[v, i] = disc_targets(pts, (h16, w16), cfg.min_lesion_radius)
        key = _cache_key(samples, cfg, v)
        cached = _load_cache(cfg.cache_dir, key, parts)
        if cached is None:
            cached = _extract(samples, cfg, v, parts)
            _save_cache(cfg.cache_dir, key, cached)
        else:
            log.info("frozen features of variant %d loaded from cache %s", v, key)
        dtype = np.float16 if cfg.fast else np.float32  # float32: gathered many times per fit
        for part in parts:
            arr = cached[part]
            arrays[part].append(np.asarray(arr) if part == "mask" else np.asarray(arr, dtype))
    stacked = {part: np.stack(arrays[part]) for part in parts}
    return FeatureSet(
        s16=stacked["s16"], s32=stacked["s32"], mask=stacked["mask"], target=target,
        known=known, labels=labels, lesions=points,
        other=other_breast(samples),
        uncentred=np.array(
            [finding_counts.get(s.sample_id, 0) - centred.get(s.sample_id, 0) for s in samples]
        ),
        s8=stacked.get("s8"), s7in=stacked.get("s7in"),
    )  # fmt: skip


Cached = dict[str, npt.NDArray[Any]]
"""Cached arrays of one variant, by part name (see :func:`cache_parts`)."""


def cache_parts(cfg: LesionConfig) -> tuple[str, ...]:
    """Arrays cached per variant: stride-16 and stride-32 features and breast masks, plus the
    stride-8 features for a ``fine`` head and stage 6's output when stage 7 trains (the first
    stage of unfreezing starts from it)."""
    parts: tuple[str, ...] = ("s16", "s32", "mask")
    if cfg.fine:
        parts += ("s8",)
    if cfg.tail_stages >= 1:
        parts += ("s7in",)
    return parts


def _extract(
    samples: Sequence[dsets.Sample], cfg: LesionConfig, variant: int, parts: Sequence[str]
) -> Cached:
    """The frozen arrays ``parts`` (see :func:`cache_parts`) of one variant of each film."""
    net = LiteLesionNet(pretrained=True).eval()
    out: dict[str, list[npt.NDArray[Any]]] = {part: [] for part in parts}
    bar = tqdm(
        total=len(samples), desc=f"frozen features (variant {variant})", unit="img",
        disable=not cfg.progress,
    )  # fmt: skip
    with torch.inference_mode():
        for start in range(0, len(samples), 4):
            chunk = samples[start : start + 4]
            x = np.stack(
                [
                    augment_image(
                        dsets.preprocess_sample(s, cfg.spacing_mm, cfg.size).image, variant
                    )
                    for s in chunk
                ]
            ).astype(np.float32)
            xt = torch.from_numpy(x)
            s8, s16 = net.encode(xt)
            s7in = net.stage7_input(s16)
            found = {
                "s8": s8, "s16": s16, "s7in": s7in, "s32": net.tail_from_stage7(s7in),
                "mask": breast_cells(xt),
            }  # fmt: skip
            for part in parts:
                arr = found[part]
                out[part].append(arr.numpy() if part == "mask" else arr.half().numpy())
            bar.update(len(chunk))
    bar.close()
    return {part: np.concatenate(arrs) for part, arrs in out.items()}


def _load_cache(folder: Path | None, key: str, parts: Sequence[str]) -> Cached | None:
    if folder is None:
        return None
    paths = {part: folder / f"{key}-{part}.npy" for part in parts}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {part: np.load(p, mmap_mode="r") for part, p in paths.items()}


def _save_cache(folder: Path | None, key: str, arrays: Cached) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for part, arr in arrays.items():
        tmp = folder / f"{key}-{part}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(folder / f"{key}-{part}.npy")


# --- training the head ------------------------------------------------------------------


@dataclass
class Batch:
    """Tensors of a batch of films, each in one of its variants."""

    s16: torch.Tensor
    s32: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    known: torch.Tensor
    labels: torch.Tensor
    s8: torch.Tensor | None
    s7in: torch.Tensor | None

    def maps(self, net: LiteLesionNet) -> torch.Tensor:
        """``net``'s lesion maps: its head on the cached stride-32 map, or on its tail stages
        that train (from the cached stage-6 output when only stage 7 does)."""
        if net.trainable_tail == 0:
            frozen: torch.Tensor = net.head(self.s16, self.s32, self.s8)
            return frozen
        s7in = self.s7in if net.trainable_tail == 1 else None
        return net.run_head(self.s16, s7in, self.s8)


def _batch(feats: FeatureSet, idx: npt.NDArray[np.int64], variants: npt.NDArray[np.int64]) -> Batch:
    """Films ``idx``, each in its variant of ``variants``."""

    def floats(arr: npt.NDArray[Any] | None) -> torch.Tensor | None:
        return None if arr is None else torch.from_numpy(np.asarray(arr, dtype=np.float32))

    return Batch(
        s16=torch.from_numpy(np.asarray(feats.s16[variants, idx], dtype=np.float32)),
        s32=torch.from_numpy(np.asarray(feats.s32[variants, idx], dtype=np.float32)),
        mask=torch.from_numpy(np.asarray(feats.mask[variants, idx])),
        target=torch.from_numpy(feats.target[variants, idx].astype(np.float32)),
        known=torch.from_numpy(feats.known[idx]),
        labels=torch.from_numpy(feats.labels[idx].astype(np.float32)),
        s8=floats(None if feats.s8 is None else feats.s8[variants, idx]),
        s7in=floats(None if feats.s7in is None else feats.s7in[variants, idx]),
    )


def _loss(
    net: LiteLesionNet, maps: torch.Tensor, b: Batch, cfg: LesionConfig, image_pos: torch.Tensor
) -> torch.Tensor:
    weight = (b.mask & b.known[:, None, None]).float()[:, None].expand_as(maps)
    pos = torch.tensor(cfg.pos_weight)
    pixel = F.binary_cross_entropy_with_logits(maps, b.target, weight=weight, pos_weight=pos)
    pixel = pixel * weight.numel() / weight.sum().clamp_min(1.0)
    image = F.binary_cross_entropy_with_logits(
        net.pool(maps, b.mask), b.labels, pos_weight=image_pos
    )
    return pixel + image


def fit_head(
    feats: FeatureSet, train_idx: npt.NDArray[np.int64], cfg: LesionConfig, *, seed: int
) -> LiteLesionNet:
    """Train a lesion head (then, with ``cfg.tail_stages``, the deepest backbone stages)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # the backbone's ImageNet weights: the tail stages train from them, and export keeps them
    net = LiteLesionNet(**{**cfg.net_kwargs(), "heads": 1}, pretrained=True)
    net.set_trainable_tail(0)
    net.bn_train = cfg.bn_train
    lab = feats.labels[train_idx]
    image_pos = torch.tensor(
        [(len(lab) - max(int(c.sum()), 1)) / max(int(c.sum()), 1) for c in lab.T],
        dtype=torch.float32,
    ).clamp(1.0, 20.0)
    phases = [(0, cfg.epochs, cfg.lr)]
    phases += [(k, cfg.tail_epochs, cfg.lr / (3.0 * k)) for k in range(1, cfg.tail_stages + 1)]
    for stage, epochs, lr in phases:
        if epochs <= 0:
            continue
        net.set_trainable_tail(stage)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        steps = epochs * math.ceil(len(train_idx) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        net.train()
        for _ in range(epochs):
            order = rng.permutation(train_idx)
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                var = rng.integers(0, feats.s16.shape[0], len(idx))
                b = _batch(feats, idx, var)
                maps = b.maps(net)
                loss = _loss(net, maps, b, cfg, image_pos)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
    return net.eval()


def fit_heads(
    feats: FeatureSet, train_idx: npt.NDArray[np.int64], cfg: LesionConfig, *, seed: int
) -> LiteLesionNet:
    """:func:`fit_head`, or with ``cfg.heads`` > 1 that many heads of other seeds in one net
    (with a trained stage 7, each head keeps its own: :class:`OwnTail`)."""
    if cfg.heads == 1:
        return fit_head(feats, train_idx, cfg, seed=seed)
    if cfg.tail_stages > 1:
        raise InvalidDatasetError("an ensemble of heads shares stage 6: tail_stages 0 or 1")
    nets = [fit_head(feats, train_idx, cfg, seed=seed + 7919 * j) for j in range(cfg.heads)]
    net = nets[0]
    net.head = HeadEnsemble([n.head for n in nets if isinstance(n.head, LesionHead)])
    if cfg.tail_stages:
        net.own_tails = torch.nn.ModuleList([OwnTail.of(n.backbone) for n in nets[1:]])
    return net.eval()


def predict_maps(
    net: LiteLesionNet, feats: FeatureSet, idx: npt.NDArray[np.int64], cfg: LesionConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Image logits (n, 2) and lesion logit maps (n, 2, h, w) of films ``idx`` (variant 0,
    merged with its mirror, variant 1, under ``cfg.mirror_tta``)."""

    def head_maps(part: npt.NDArray[np.int64], variant: int) -> torch.Tensor:
        return _batch(feats, part, np.full(len(part), variant, np.int64)).maps(net)

    logits, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(idx), 16):
            part = idx[start : start + 16]
            mask = torch.from_numpy(np.asarray(feats.mask[0, part]))
            m = head_maps(part, 0)
            if cfg.mirror_tta:
                m = merge_mirrored(m, head_maps(part, 1))
            logits.append(net.pool(m, mask).numpy())
            maps.append(m.numpy())
    return np.concatenate(logits), np.concatenate(maps)


# --- the breast score from both breasts ---------------------------------------------------


def fit_combiner(own: FloatArray, other: FloatArray, y: npt.NDArray[np.int64]) -> Combiner:
    """Logistic regressions on [own, other] and on [own] alone (pairs where both exist)."""
    pair = ~np.isnan(other)
    if len(np.unique(y[pair])) < 2 or len(np.unique(y)) < 2:
        # too few films to fit (tiny smoke runs): the film's logit alone, unchanged
        log.warning("breast combiner: one class only in the training folds; identity used")
        return Combiner(1.0, 0.0, 0.0, 1.0, 0.0, use_other=True)
    both = LogisticRegression(C=1.0).fit(np.stack([own[pair], other[pair]], axis=1), y[pair])
    single = LogisticRegression(C=1.0).fit(own[:, None], y)
    return Combiner(
        own=float(both.coef_[0, 0]), other=float(both.coef_[0, 1]), bias=float(both.intercept_[0]),
        single_own=float(single.coef_[0, 0]), single_bias=float(single.intercept_[0]),
        use_other=True,
    )  # fmt: skip


def other_logits(
    logits: FloatArray, other: npt.NDArray[np.int64], idx: Sequence[int] | npt.NDArray[Any]
) -> FloatArray:
    """The other breast's logit for each film ``idx`` (NaN where there is none)."""
    return np.array([logits[other[i]] if other[i] >= 0 else np.nan for i in idx])


def inner_folds(
    groups: npt.NDArray[Any],
    y: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    k: int,
    seed: int,
) -> list[Fold]:
    """Patient-grouped stratified folds of the training indices ``idx``."""
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        (idx[tr], idx[va]) for tr, va in splitter.split(np.zeros(len(idx)), y[idx], groups[idx])
    ]


# --- FROC -------------------------------------------------------------------------------


def froc(
    maps: Sequence[npt.NDArray[np.float32]],
    masks: Sequence[npt.NDArray[np.bool_]],
    lesions: Sequence[Sequence[tuple[float, float, float]]],
    rates: Sequence[float] = FROC_RATES,
) -> dict[str, Any]:
    """Sensitivity at false positives per image, from probability maps and (row, col, r) lesions.

    A lesion is found when a detection's centre lies in its circle; a detection inside no
    lesion is a false positive.
    """
    scores: list[float] = []
    hits: list[int] = []  # lesion id, or -1 for a false positive
    lesion_id = 0
    for prob, mask, found in zip(maps, masks, lesions, strict=True):
        ids = list(range(lesion_id, lesion_id + len(found)))
        lesion_id += len(found)
        for d in detections_from_map(prob, mask, max_detections=20, stride=STRIDE):
            inside = [
                j
                for j, (r, c, rad) in zip(ids, found, strict=True)
                if (d.row - r) ** 2 + (d.col - c) ** 2 <= rad**2
            ]
            scores.append(d.score)
            hits.append(inside[0] if inside else -1)
    n_images = max(len(maps), 1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    sens_at: list[float] = []
    curve_fp, curve_sens = [0.0], [0.0]
    found_ids: set[int] = set()
    fp = 0
    for i in order:
        if hits[i] < 0:
            fp += 1
        else:
            found_ids.add(hits[i])
        curve_fp.append(fp / n_images)
        curve_sens.append(len(found_ids) / max(lesion_id, 1))
    fps = np.asarray(curve_fp)
    sens = np.asarray(curve_sens)
    ranked = np.concatenate([[np.inf], np.asarray(scores, dtype=np.float64)[order]])
    cuts: list[float] = []
    for rate in rates:
        ok = np.flatnonzero(fps <= rate)
        sens_at.append(float(sens[ok].max()) if len(ok) else 0.0)
        # the lowest detection score still inside this false-positive budget
        cuts.append(float(ranked[ok[-1]]) if len(ok) > 1 else 1.0)
    return {
        "fp_per_image": list(rates),
        "sensitivity": sens_at,
        "n_lesions": lesion_id,
        "score_thresholds": cuts,
    }


def task_lesions(
    points: Sequence[dsets.LesionPoint], task: dsets.Task
) -> list[tuple[float, float, float]]:
    """(row, col, radius) of the lesions that count for a task (malignant ones, or all)."""
    return [(r, c, rad) for r, c, rad, m in points if m or task == "abnormal"]


# --- cross-validation ---------------------------------------------------------------------


@dataclass
class LesionResult:
    """Out-of-fold outcome of one lesion-family row."""

    name: str
    parameters: int
    scores: FloatArray
    thresholds: FloatArray
    fold_aucs: list[float]
    seconds_per_epoch: float
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    froc: dict[str, Any] | None = None
    repeat_aucs: list[float] = field(default_factory=list)


def _youden(y: npt.NDArray[np.int64], p: FloatArray) -> float:
    return M.youden_threshold(y, p)


def cross_validate_lesion(
    feats: FeatureSet,
    groups: npt.NDArray[Any],
    folds: Sequence[Fold],
    cfg: LesionConfig,
) -> dict[str, LesionResult]:
    """Rows ``lite0-lesion`` (film alone) and ``lite0-lesion+other`` on the same folds.

    Also returns out-of-fold image logits in the result's ``scores`` of a hidden row
    ``_logits`` (used to fit the exported model's combiner).
    """
    y = feats.labels[:, cfg.label_column]
    n = len(y)
    rows: dict[str, LesionResult] = {}
    all_aucs: dict[str, list[float]] = {"lite0-lesion": [], "lite0-lesion+other": []}
    for repeat in range(cfg.repeats):
        seed = cfg.seed + 1000 * repeat
        alone, paired, t_alone, t_paired = (np.full(n, np.nan) for _ in range(4))
        oof_logit = np.full(n, np.nan)
        prob_maps: list[npt.NDArray[np.float32] | None] = [None] * n
        fold_aucs: dict[str, list[float]] = {"alone": [], "paired": []}
        start = time.perf_counter()
        epochs_run = 0
        for k, (tr, va) in enumerate(folds):
            inner = np.full(n, np.nan)
            for itr, iva in inner_folds(groups, y, tr, cfg.inner_folds, seed + k):
                net = fit_heads(feats, itr, cfg, seed=seed + 17 * k + len(itr))
                inner[iva] = predict_maps(net, feats, iva, cfg)[0][:, cfg.channel]
                epochs_run += cfg.heads * cfg.epochs + cfg.tail_stages * cfg.tail_epochs
            comb = fit_combiner(inner[tr], other_logits(inner, feats.other, tr), y[tr])
            net = fit_heads(feats, tr, cfg, seed=seed + k)
            epochs_run += cfg.heads * cfg.epochs + cfg.tail_stages * cfg.tail_epochs
            logits, maps = predict_maps(net, feats, va, cfg)
            test = np.full(n, np.nan)
            test[va] = logits[:, cfg.channel]
            # the other breast of a test film is in the same (patient-level) test fold
            oth = other_logits(test, feats.other, va)
            alone[va] = comb.probability(test[va], None)
            paired[va] = comb.probability(test[va], oth)
            t_alone[va] = _youden(y[tr], comb.probability(inner[tr], None))
            t_paired[va] = _youden(
                y[tr], comb.probability(inner[tr], other_logits(inner, feats.other, tr))
            )
            oof_logit[va] = test[va]
            for j, i in enumerate(va):
                prob_maps[i] = 1.0 / (1.0 + np.exp(-maps[j, cfg.channel]))
            fold_aucs["alone"].append(M.roc_auc(y[va], alone[va]))
            fold_aucs["paired"].append(M.roc_auc(y[va], paired[va]))
            log.info(
                "lesion fold %d/%d: AUC %.3f alone, %.3f with the other breast",
                k + 1, len(folds), fold_aucs["alone"][-1], fold_aucs["paired"][-1],
            )  # fmt: skip
        per_epoch = (time.perf_counter() - start) / max(epochs_run, 1)
        all_aucs["lite0-lesion"].append(M.roc_auc(y, alone))
        all_aucs["lite0-lesion+other"].append(M.roc_auc(y, paired))
        if repeat > 0:
            continue
        params = sum(p.numel() for p in LiteLesionNet(**cfg.net_kwargs()).parameters())
        froc_result = froc(
            [m for m in prob_maps if m is not None],
            [np.asarray(feats.mask[0, i]) for i in range(n)],
            [task_lesions(p, cfg.task) for p in feats.lesions],
        )
        # findings without a centre on the films positive for the task
        froc_result["n_findings_without_centre"] = int(feats.uncentred[y == 1].sum())
        for name, scores, thr, fa in (
            ("lite0-lesion", alone, t_alone, fold_aucs["alone"]),
            ("lite0-lesion+other", paired, t_paired, fold_aucs["paired"]),
        ):
            rows[name] = LesionResult(
                name=name, parameters=params, scores=scores, thresholds=thr, fold_aucs=fa,
                seconds_per_epoch=per_epoch, froc=froc_result,
            )  # fmt: skip
        rows["_logits"] = LesionResult("_logits", params, oof_logit, t_alone, [], per_epoch)
    for name, aucs in all_aucs.items():
        rows[name].repeat_aucs = aucs
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        row.metrics = M.metrics_with_ci(
            y, row.scores, row.thresholds, groups=list(groups), n_boot=cfg.n_boot, seed=cfg.seed
        )
    return rows


def global_features(feats: FeatureSet) -> FloatArray:
    """Whole-image features: mean and max of the frozen maps over the breast (variant 0)."""
    out = []
    for i in range(feats.s16.shape[1]):
        m16 = np.asarray(feats.mask[0, i])
        if not m16.any():
            m16 = np.ones_like(m16)
        s16 = np.asarray(feats.s16[0, i], dtype=np.float32)[:, m16]
        s32 = np.asarray(feats.s32[0, i], dtype=np.float32)
        m32 = F.max_pool2d(torch.from_numpy(m16[None].astype(np.float32)), 2, ceil_mode=True)
        s32 = s32[:, m32[0].numpy() > 0]
        out.append(np.concatenate([s16.mean(1), s16.max(1), s32.mean(1), s32.max(1)]))
    return np.asarray(out, dtype=np.float64)


class _Constant:
    """A classifier of one class: every film gets logit 0."""

    def decision_function(self, x: FloatArray) -> FloatArray:
        return np.zeros(len(x))


def cross_validate_global(
    feats: FeatureSet, groups: npt.NDArray[Any], folds: Sequence[Fold], cfg: LesionConfig
) -> dict[str, LesionResult]:
    """Rows ``lite0-global`` and ``lite0-global+other``: pooled frozen features, logistic
    regression (C chosen by inner CV), the same combiner protocol as the lesion rows."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = global_features(feats)
    y = feats.labels[:, cfg.label_column]
    n = len(y)

    def fit(idx: npt.NDArray[np.int64]) -> Any:
        if len(np.unique(y[idx])) < 2:  # tiny smoke runs
            return _Constant()
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1e-3, max_iter=2000))
        return model.fit(x[idx], y[idx])

    alone, paired, t_alone, t_paired = (np.full(n, np.nan) for _ in range(4))
    fa: list[float] = []
    fp: list[float] = []
    start = time.perf_counter()
    for k, (tr, va) in enumerate(folds):
        inner = np.full(n, np.nan)
        for itr, iva in inner_folds(groups, y, tr, cfg.inner_folds, cfg.seed + k):
            inner[iva] = fit(itr).decision_function(x[iva])
        comb = fit_combiner(inner[tr], other_logits(inner, feats.other, tr), y[tr])
        test = np.full(n, np.nan)
        test[va] = fit(tr).decision_function(x[va])
        alone[va] = comb.probability(test[va], None)
        paired[va] = comb.probability(test[va], other_logits(test, feats.other, va))
        t_alone[va] = _youden(y[tr], comb.probability(inner[tr], None))
        t_paired[va] = _youden(
            y[tr], comb.probability(inner[tr], other_logits(inner, feats.other, tr))
        )
        fa.append(M.roc_auc(y[va], alone[va]))
        fp.append(M.roc_auc(y[va], paired[va]))
    seconds = time.perf_counter() - start
    rows = {}
    for name, scores, thr, aucs in (
        ("lite0-global", alone, t_alone, fa),
        ("lite0-global+other", paired, t_paired, fp),
    ):
        row = LesionResult(name, x.shape[1] + 1, scores, thr, aucs, seconds)
        row.metrics = M.metrics_with_ci(
            y, scores, thr, groups=list(groups), n_boot=cfg.n_boot, seed=cfg.seed
        )
        row.repeat_aucs = [float(row.metrics["auc"]["value"])]  # type: ignore[arg-type]
        rows[name] = row
    return rows


def check_lesion_samples(samples: Sequence[dsets.Sample]) -> None:
    """The lesion family needs laterality for the other breast; say so plainly."""
    if not any(s.laterality for s in samples):
        raise InvalidDatasetError("the lesion models need each film's laterality")
