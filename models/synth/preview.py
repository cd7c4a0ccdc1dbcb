"""Contact sheets of a written dataset: a quick look at what the captures of each identity look like."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from models.synth.dataset import BLOCKS_PER_PALLET, METADATA_FILE

Row = dict[str, str]


def _spread_identities(by_identity: dict[str, list[Row]], count: int) -> list[str]:
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


def contact_sheet(
    root: Path, *, identities: int = 6, columns: int = 6, gap: int = 4, scale: float = 1.0
) -> Image.Image:
    """One row per block identity, captures ordered new then aged, camera, frame; tiles ``scale`` x size.

    The identities are spread over the dataset and shared evenly between its families (at least two rows
    each), so a sheet of a several-family dataset compares the families. Each row is labelled with the
    identity, its family, material and station styles.
    """
    with (root / METADATA_FILE).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_family: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_family[row.get("family", "")][f"{row['pallet_id']}/{row['block']}"].append(row)
    per_family = max(2, -(-identities // len(by_family)))
    chosen: list[list[Row]] = []
    for family in sorted(by_family):
        groups = by_family[family]
        chosen += [groups[name] for name in _spread_identities(groups, per_family)]
    columns = min(columns, max(len(captures) for captures in chosen))
    with Image.open(root / rows[0]["path"]) as sample:
        width, height = round(sample.size[0] * scale), round(sample.size[1] * scale)
    sheet = Image.new("RGB", (columns * (width + gap) - gap, len(chosen) * (height + gap) - gap), "white")
    draw = ImageDraw.Draw(sheet)
    for row_index, group in enumerate(chosen):
        captures = sorted(group, key=lambda r: (r.get("aged", "0"), r["camera"], r["frame"]))
        # spread the columns over the identity's captures so aged ones show up too
        indices = sorted({round(i * (len(captures) - 1) / max(1, columns - 1)) for i in range(columns)})
        top = row_index * (height + gap)
        for column, index in enumerate(indices):
            record = captures[index]
            left = column * (width + gap)
            with Image.open(root / record["path"]) as image:
                sheet.paste(
                    image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), (left, top)
                )
            label = f"{record['camera']} f{record['frame']}{' aged' if record.get('aged') == '1' else ''}"
            draw.text((left + 4, top + height - 14), label, fill=(255, 255, 160))
        first = captures[0]
        styles = ",".join(sorted({r.get("style", "") for r in captures}))
        identity = f"{first['pallet_id']}/{first['block']}"
        label = f"{identity} {first.get('family', '')} {first.get('material', '')} {styles}"
        draw.text((4, top + 3), label, fill=(255, 255, 160))
    return sheet
