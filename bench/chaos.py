"""Chaos campaign: studies sent to `cad-node serve` while it is SIGKILLed and the PACS is down.

Starts a node (tiny test model) and a storage SCP as its PACS, sends N four-view studies over
K concurrent associations (each sender resends what got no Success, as a modality does), kills
the node with SIGKILL at random moments (restarting it at once) and stops the PACS once for a
given time; then waits for every result and prints images acknowledged / stored / lost, the
jobs of each study revision, and per study what reached the PACS: results missing, doubled
(objects no job records), identical re-sends and re-sends with other bytes.

    python bench/chaos.py [--studies 10] [--associations 4] [--kills 3] [--outage 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from campaign import run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the node")
    parser.add_argument("--outage", type=float, default=10.0, help="PACS outage, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--delivery-attempts",
        type=int,
        help="the node's delivery attempt budget (backoff 1 s, capped at 2 s): an outage "
        "longer than that schedule must still end with every result delivered",
    )
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (node log, DB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cad-node-chaos-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = run_chaos(
            folder,
            studies=args.studies,
            associations=args.associations,
            kills=args.kills,
            outage_seconds=args.outage,
            seed=args.seed,
            timeout=args.timeout,
            delivery_attempts=args.delivery_attempts,
            progress=lambda line: print(line, flush=True),
        )
    print(report.format())
    bad = report.lost or report.phi or not report.alive
    bad = bad or any(s.missing or s.unknown or s.changed_resends for s in report.studies)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
