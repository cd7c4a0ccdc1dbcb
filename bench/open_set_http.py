"""Open-set identification measured over the service's v1 API, the way a camera station drives it.

For each scenario a fresh database and a real ``uvicorn`` server with the checkpoint under test: ``known``
pallets are received (one camera, new captures), then those pallets and ``unknown`` never-seen pallets are
dispatched (the other camera; new or aged captures; block order shuffled). Every answer is counted: known
pallets matched to the right pallet, to a wrong one, flagged for review, or registered again; unknown pallets
merged into a known pallet (the error that must not happen), flagged for review, or registered as new.

This measures what the evaluation measures (``palletreid evaluate``) through the whole service: image
decoding, the HNSW index, stored local features, the transaction.
Run ``python -m bench.open_set_http --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from app.db.embedded import embedded_postgres
from app.db.migrations import upgrade_to_head
from app.db.session import throwaway_database
from bench.latency import running_server
from bench.runner import machine_info
from models.runtime.checkpoint import DEFAULT_CHECKPOINT

logger = logging.getLogger(__name__)

BLOCKS = 6


@dataclass(frozen=True)
class Scenario:
    known: int
    unknown: int
    aged: bool

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """``KNOWN+UNKNOWN`` or ``KNOWN+UNKNOWN:aged``."""
        counts, _, condition = text.partition(":")
        known, _, unknown = counts.partition("+")
        if condition not in ("", "new", "aged") or not known.isdigit() or not unknown.isdigit():
            raise argparse.ArgumentTypeError(f"expected KNOWN+UNKNOWN[:new|aged], got {text!r}")
        return cls(known=int(known), unknown=int(unknown), aged=condition == "aged")


@dataclass
class Counts:
    known_identified: int = 0
    known_wrong_pallet: int = 0
    known_review: int = 0
    known_registered: int = 0
    unknown_matched: int = 0
    unknown_review: int = 0
    unknown_new: int = 0
    dispatch_seconds: list[float] = field(default_factory=list)


def read_captures(data: Path) -> dict[str, dict[tuple[str, bool], list[Path]]]:
    """pallet -> (camera, aged) -> the six block images of frame ``000`` (new) / ``001`` (aged), by block."""
    blocks: dict[str, dict[tuple[str, bool], dict[int, Path]]] = defaultdict(lambda: defaultdict(dict))
    with (data / "metadata.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            aged = row.get("aged", "0") == "1"
            blocks[row["pallet_id"]][(row["camera"], aged)][int(row["block"])] = data / row["path"]
    return {
        pallet: {key: [paths[index] for index in sorted(paths)] for key, paths in captures.items()}
        for pallet, captures in blocks.items()
    }


def _files(paths: Sequence[Path], order: Sequence[int]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("blocks", (paths[i].name, paths[i].read_bytes(), "image/jpeg")) for i in order]


def run_scenario(
    client: httpx.Client,
    captures: dict[str, dict[tuple[str, bool], list[Path]]],
    scenario: Scenario,
    *,
    receipt_camera: str,
    dispatch_camera: str,
    seed: int,
) -> Counts:
    """Receive the known pallets, then dispatch known and unknown pallets in a shuffled order."""
    pallets = sorted(captures)
    if scenario.known + scenario.unknown > len(pallets):
        raise ValueError(f"the data holds {len(pallets)} pallets, the scenario needs more")
    known = pallets[: scenario.known]
    unknown = pallets[len(pallets) - scenario.unknown :]
    rng = random.Random(seed)
    registered: dict[str, str] = {}
    for pallet in tqdm(known, desc=f"receipts ({scenario.known} known)", unit="pallet"):
        response = client.post(
            "/v1/receipts", files=_files(captures[pallet][(receipt_camera, False)], range(BLOCKS))
        )
        response.raise_for_status()
        registered[pallet] = response.json()["pallet_id"]
    counts = Counts()
    dispatches = [(pallet, True) for pallet in known] + [(pallet, False) for pallet in unknown]
    rng.shuffle(dispatches)
    for pallet, is_known in tqdm(dispatches, desc="dispatches", unit="pallet"):
        order = list(range(BLOCKS))
        rng.shuffle(order)
        started = time.perf_counter()
        response = client.post(
            "/v1/dispatches", files=_files(captures[pallet][(dispatch_camera, scenario.aged)], order)
        )
        counts.dispatch_seconds.append(time.perf_counter() - started)
        response.raise_for_status()
        result = response.json()
        matched = result["decision"] == "matched"
        if is_known:
            if matched and result["pallet_id"] == registered[pallet]:
                counts.known_identified += 1
            elif matched:
                counts.known_wrong_pallet += 1
            elif result["review"]:
                counts.known_review += 1
            else:
                counts.known_registered += 1
        elif matched:
            counts.unknown_matched += 1
        elif result["review"]:
            counts.unknown_review += 1
        else:
            counts.unknown_new += 1
    return counts


@contextmanager
def _database(url: str | None) -> Iterator[str]:
    with ExitStack() as stack:
        if url is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="palletreid-openset-")))
            url = stack.enter_context(embedded_postgres(directory))
        yield url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.open_set_http",
        description=(
            "Open-set identification over the v1 API: per scenario a fresh database and server, known "
            "pallets received, then known and unknown pallets dispatched; prints one JSON document with "
            "the counts per scenario. Uses DATABASE_URL's server when given with --database-url, else an "
            "embedded PostgreSQL."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset root (metadata.csv, images/)")
    parser.add_argument(
        "--scenario",
        type=Scenario.parse,
        action="append",
        required=True,
        help="KNOWN+UNKNOWN[:new|aged], repeatable (e.g. 1+100, 200+100:aged)",
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model under test")
    parser.add_argument("--receipt-camera", default="cam_1", help="camera of the receipts (default cam_1)")
    parser.add_argument("--dispatch-camera", default="cam_2", help="camera of the dispatches (default cam_2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server to create databases on")
    parser.add_argument("--seed", type=int, default=0, help="dispatch and block order")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    captures = read_captures(args.data)
    results: list[dict[str, Any]] = []
    with _database(args.database_url) as server_url:
        for scenario in args.scenario:
            with ExitStack() as stack:
                url = stack.enter_context(throwaway_database(server_url, prefix="palletreid_openset"))
                upgrade_to_head(url)
                server = stack.enter_context(running_server(url, args.checkpoint, threads=args.threads))
                client = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=120))
                counts = run_scenario(
                    client,
                    captures,
                    scenario,
                    receipt_camera=args.receipt_camera,
                    dispatch_camera=args.dispatch_camera,
                    seed=args.seed,
                )
                seconds = sorted(counts.dispatch_seconds)
                summary = {key: value for key, value in asdict(counts).items() if key != "dispatch_seconds"}
                results.append(
                    {
                        "scenario": asdict(scenario),
                        **summary,
                        "dispatch_p50_ms": round(1000 * seconds[len(seconds) // 2], 1),
                        "calibration": client.get("/v1/calibration").json(),
                    }
                )
                logger.info("%s: %s", scenario, summary)
    document = {
        "machine": machine_info(),
        "data": str(args.data),
        "checkpoint": str(args.checkpoint),
        "scenarios": results,
    }
    text = json.dumps(document, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
