"""Reader of annotated side-view datasets (``annotations.jsonl``, as ``palletreid synth-sides`` writes them).

One JSON object per image: ``path`` (relative to the dataset root), ``pallet_id``, ``side``, ``family``,
``background``, ``width``, ``height``, optionally ``aged`` (the blocks are shown aged; absent: new) and
``blocks`` left to right, each with ``position``, ``identity``, ``box`` (x0, y0, x1, y1 pixels), ``quad``
(top-left, top-right, bottom-right, bottom-left) and ``visible``.
Any source of annotated side views (real ones included) can be written in this format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANNOTATIONS_FILE = "annotations.jsonl"

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class TruthBlock:
    position: int
    identity: str
    box: Box
    quad: tuple[tuple[float, float], ...]
    visible: float

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TruthBlock:
        x0, y0, x1, y1 = (float(value) for value in values["box"])
        return cls(
            position=int(values["position"]),
            identity=str(values["identity"]),
            box=(x0, y0, x1, y1),
            quad=tuple((float(x), float(y)) for x, y in values["quad"]),
            visible=float(values.get("visible", 1.0)),
        )


@dataclass(frozen=True, slots=True)
class AnnotatedView:
    """One annotated side view."""

    path: Path
    pallet_id: str
    side: int
    family: str
    background: str
    width: int
    height: int
    blocks: tuple[TruthBlock, ...]
    aged: bool = False


class AnnotationError(ValueError):
    """A side-view dataset is missing or its annotations cannot be read."""


def read_annotations(root: Path) -> list[AnnotatedView]:
    """The annotated views under ``root``, in file order."""
    root = Path(root)
    path = root / ANNOTATIONS_FILE
    if not path.is_file():
        raise AnnotationError(
            f"{path} does not exist; write a side-view dataset with `palletreid synth-sides`"
        )
    views = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                views.append(
                    AnnotatedView(
                        path=root / record["path"],
                        pallet_id=str(record["pallet_id"]),
                        side=int(record["side"]),
                        family=str(record["family"]),
                        background=str(record["background"]),
                        width=int(record["width"]),
                        height=int(record["height"]),
                        blocks=tuple(TruthBlock.from_dict(block) for block in record["blocks"]),
                        aged=bool(record.get("aged", False)),
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise AnnotationError(f"{path}:{number}: invalid annotation ({error})") from error
    return views
