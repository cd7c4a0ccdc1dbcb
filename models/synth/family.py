"""The interface every family of synthetic captures implements.

A family is an independent world: its own wood model, its own ageing, its own cameras and processing, its own
rendering of the shared distractors (stamps, nail heads). Datasets (``models.synth.dataset``) only go through
this interface, so a model can be trained on some families and evaluated on another one it never saw.

Identity rule for every family: a block's appearance is a deterministic function of (seed, pallet index,
block position) and the family; cameras, frames and ageing draw from their own random streams.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

BlockT = TypeVar("BlockT")
CameraT = TypeVar("CameraT")

Size = tuple[int, int]  # (width, height) of a capture in pixels


@dataclass(frozen=True, slots=True)
class BlockKey:
    """Which block: the dataset seed, the pallet index and the block position (0..5) on the pallet."""

    seed: int
    pallet_index: int
    position: int


class SynthFamily(ABC, Generic[BlockT, CameraT]):
    """A generator of block identities and of captures of them.

    ``BlockT`` is the family's rendered block (new or aged), ``CameraT`` what stays fixed for one camera while
    it captures one pallet (station style, pose, light). Both are opaque to the dataset code.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    pallet_prefix: ClassVar[str]  # first letter of this family's pallet ids, unique among families
    styles: ClassVar[Mapping[str, str]]  # station style name -> one-line description

    def pallet_id(self, pallet_index: int) -> str:
        """Pallet id from the index; prefixes keep the ids of different families apart."""
        return f"{self.pallet_prefix}{pallet_index:06d}"

    @abstractmethod
    def new_block(self, key: BlockKey, size: Size) -> BlockT:
        """The new block, for captures of ``size``; depends only on ``key``."""

    @abstractmethod
    def aged_block(self, block: BlockT, key: BlockKey) -> BlockT:
        """The same block after long use (its own random stream: always the same ageing)."""

    @abstractmethod
    def material(self, block: BlockT) -> str:
        """A short material label for the metadata (e.g. ``chipwood``)."""

    @abstractmethod
    def camera(self, seed: int, pallet_index: int, camera_index: int, styles: Sequence[str]) -> CameraT:
        """One camera's fixed setup for one pallet, its station style drawn from ``styles``."""

    @abstractmethod
    def camera_style(self, camera: CameraT) -> str:
        """The station style a camera was drawn from."""

    @abstractmethod
    def capture_frames(
        self,
        block: BlockT,
        camera: CameraT,
        key: BlockKey,
        camera_index: int,
        frames: Sequence[int],
        size: Size,
    ) -> list[bytes]:
        """JPEG files of ``block`` taken by ``camera``, one per frame number (each frame its own stream)."""
