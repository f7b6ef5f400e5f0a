"""Ingest throughput: cad-node serve vs dcmtk's storescp receiving the same files.

Pushes N full-size 16-bit mammograms (2560x3328) with dcmtk ``storescu`` over one association
to each receiver and prints MB/s, images/s and the ratio. Both dcmtk ends run with
``TCP_NODELAY=1`` (without it Debian's dcmtk stalls ~45 ms per image). cad-node fsyncs every
image and records it in its audit database before answering; storescp (+B) does neither, so
the benchmark also measures the disk's write+fsync rate for the same files: the ceiling of any
receiver that makes each image durable before answering.

    python bench/ingest.py [--images 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import mammogram
from peers import dcmtk_tool
from services import free_port

ROWS, COLS = 3328, 2560
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DCMTK: dict[str, str] = {}
"""dcmtk tool paths, resolved in main() (not pynetdicom's apps of the same names)."""


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4096, size=(ROWS, COLS), dtype=np.uint16)
    study = generate_uid()
    paths = []
    for i in range(n):
        ds = mammogram(
            study_uid=study,
            rows=ROWS,
            cols=COLS,
            view="CC" if i % 2 else "MLO",
            laterality="L" if i % 4 < 2 else "R",
        )
        ds.PixelData = np.roll(base, i * 97).tobytes()
        path = folder / f"img{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_listening(port: int, called: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            [DCMTK["echoscu"], "-aec", called, "127.0.0.1", str(port)],
            capture_output=True,
            env=DCMTK_ENV,
            check=False,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{called} did not start listening on {port}")


def push(port: int, called: str, files: list[Path]) -> float:
    start = time.perf_counter()
    r = subprocess.run(
        [DCMTK["storescu"], "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {r.stderr[-500:]}")
    return elapsed


def run_cad_node(work: Path, files: list[Path]) -> float:
    port = free_port()
    data = work / "cad-node-data"
    shutil.rmtree(data, ignore_errors=True)
    env = {
        **os.environ,
        "CAD_NODE_DATA_DIR": str(data),
        "CAD_NODE_PORT": str(port),
        "CAD_NODE_HOST": "127.0.0.1",
        "CAD_NODE_STUDY_QUIET_SECONDS": "3600",
        "CAD_NODE_LOG_LEVEL": "WARNING",
        "CAD_NODE_MIN_FREE_MB": "0",
    }
    exe = str(Path(sys.executable).parent / "cad-node")
    proc = subprocess.Popen([exe, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, "CADNODE")
        return push(port, "CADNODE", files)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_storescp(work: Path, files: list[Path]) -> float:
    port = free_port()
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    proc = subprocess.Popen(
        [
            DCMTK["storescp"],
            "+B",
            "--max-pdu",
            "131072",
            "-aet",
            "STORESCP",
            "-od",
            str(out),
            str(port),
        ],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, "STORESCP")
        return push(port, "STORESCP", files)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_durable_write_floor(work: Path, files: list[Path]) -> float:
    """Copy the same files to the same disk with an fsync after each: no DICOM, no network.

    A receiver that makes every image durable before answering cannot beat this.
    """
    out = work / "fsync-floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    payloads = [f.read_bytes() for f in files]
    start = time.perf_counter()
    for i, data in enumerate(payloads):
        with open(out / f"{i}.dcm", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        path = dcmtk_tool(tool)
        if path is None:
            sys.exit(f"dcmtk's {tool} not found: apt-get install dcmtk")
        DCMTK[tool] = path
    with tempfile.TemporaryDirectory(
        prefix="cad-node-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        files = make_images(work / "images", args.images)
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"{args.images} images of {ROWS}x{COLS} 16-bit, {total_mb:.0f} MB in all; "
            f"dcmtk storescu over one association, TCP_NODELAY=1; {args.runs} runs each"
        )
        results: dict[str, list[float]] = {
            "cad-node serve": [],
            "dcmtk storescp +B": [],
            "disk write+fsync": [],
        }
        for _ in range(args.runs):
            results["cad-node serve"].append(run_cad_node(work, files))
            results["dcmtk storescp +B"].append(run_storescp(work, files))
            results["disk write+fsync"].append(run_durable_write_floor(work, files))
        medians = {}
        for name, times in results.items():
            t = statistics.median(times)
            medians[name] = t
            print(
                f"{name:<20} median {t:6.2f} s  {total_mb / t:7.0f} MB/s  "
                f"{args.images / t:6.1f} images/s   (runs: {', '.join(f'{x:.2f}' for x in times)})"
            )
        node = medians["cad-node serve"]
        print(
            f"cad-node / storescp throughput = {medians['dcmtk storescp +B'] / node:.2f}   "
            f"(storescp does not fsync)"
        )
        print(
            f"cad-node / disk write+fsync floor = {medians['disk write+fsync'] / node:.2f}   "
            f"(the most a receiver that fsyncs every image can reach on this disk)"
        )


if __name__ == "__main__":
    main()
