"""Contact sheets of a written dataset: a quick look at what the captures of each identity look like."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from models.synth.dataset import BLOCKS_PER_PALLET, METADATA_FILE


def _spread_identities(by_identity: dict[str, list[dict[str, str]]], count: int) -> list[str]:
    """Up to ``count`` identities spread over the pallets, with a different block position on each pallet."""
    pallets = sorted({rows[0]["pallet_id"] for rows in by_identity.values()})
    rank = {pallet: index for index, pallet in enumerate(pallets)}

    def diagonal_order(name: str) -> tuple[int, int]:
        row = by_identity[name][0]
        pallet_rank = rank[row["pallet_id"]]
        return (int(row["block"] or 0) - pallet_rank) % BLOCKS_PER_PALLET, pallet_rank

    ordered = sorted(by_identity, key=diagonal_order)
    stride = max(1, len(pallets) // count)
    return list(dict.fromkeys([*ordered[: len(pallets)][::stride], *ordered]))[:count]


def contact_sheet(root: Path, *, identities: int = 6, columns: int = 6, gap: int = 4) -> Image.Image:
    """One row per block identity (spread over the dataset), captures ordered new then aged, camera, frame.

    Each row is labelled with the identity, its station styles and its material.
    """
    with (root / METADATA_FILE).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_identity: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_identity[f"{row['pallet_id']}/{row['block']}"].append(row)
    chosen = _spread_identities(by_identity, identities)
    columns = min(columns, max(len(by_identity[name]) for name in chosen))
    with Image.open(root / rows[0]["path"]) as first:
        width, height = first.size
    sheet = Image.new("RGB", (columns * (width + gap) - gap, len(chosen) * (height + gap) - gap), "white")
    draw = ImageDraw.Draw(sheet)
    for row_index, name in enumerate(chosen):
        captures = sorted(by_identity[name], key=lambda r: (r.get("aged", "0"), r["camera"], r["frame"]))
        # spread the columns over the identity's captures so aged ones show up too
        indices = sorted({round(i * (len(captures) - 1) / max(1, columns - 1)) for i in range(columns)})
        top = row_index * (height + gap)
        for column, index in enumerate(indices):
            record = captures[index]
            left = column * (width + gap)
            with Image.open(root / record["path"]) as image:
                sheet.paste(image.convert("RGB"), (left, top))
            label = f"{record['camera']} f{record['frame']}{' aged' if record.get('aged') == '1' else ''}"
            draw.text((left + 4, top + height - 14), label, fill=(255, 255, 160))
        styles = ",".join(sorted({r.get("style", "") for r in captures}))
        draw.text((4, top + 3), f"{name} {captures[0].get('material', '')} {styles}", fill=(255, 255, 160))
    return sheet
