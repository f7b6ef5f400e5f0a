"""Fuzz campaign: malformed C-STOREs and PDU attacks against `cad-node serve`, with valid studies.

Starts a node (tiny test model) and a storage SCP as its PACS, sends M malformed C-STOREs
(byte flips, truncations, wrong VRs, absurd lengths, UID and VR tricks, another patient in a
known study) in associations of ten, raw PDU-level attacks (an A-ASSOCIATE-RQ header declaring
0xFFFFFFFF bytes, unknown PDU types, P-DATA before an association, garbage PDVs...) and valid
four-view studies, interleaved; prints the status histogram, whether the node is alive and
answers C-ECHO, its RSS before and after, tracebacks logged, patient data found in its log or
audit database, and whether each valid study was analysed and delivered exactly once.

    python bench/fuzz.py [--malformed 2000] [--studies 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from campaign import run_fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--malformed", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=5, help="valid studies (the first warms up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (node log, DB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cad-node-fuzz-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = run_fuzz(
            folder,
            malformed=args.malformed,
            valid=args.studies,
            seed=args.seed,
            progress=lambda line: print(line, flush=True),
        )
    print(report.format())
    failed = (
        not report.echo
        or report.tracebacks
        or report.phi
        or not all(v.analysed and v.delivered_once for v in report.valid)
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
