"""P x K identity sampler: every batch holds P identities with K captures each (for batch-hard triplets)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class PKBatchSampler(Sampler[list[int]]):
    """Endless stream of batches of ``ids_per_batch`` identities x ``instances_per_id`` samples.

    An *epoch* is one pass over the identities in a shuffled order (``batches_per_epoch`` batches; the last
    incomplete group of identities is dropped). Identities with fewer than K samples are sampled with
    replacement. The stream is a pure function of ``seed``, so training can resume at any batch by passing
    ``start_batch``.
    """

    def __init__(
        self,
        labels: Sequence[int],
        ids_per_batch: int,
        instances_per_id: int,
        *,
        seed: int = 0,
        start_batch: int = 0,
    ) -> None:
        if ids_per_batch < 1 or instances_per_id < 1:
            raise ValueError("ids_per_batch and instances_per_id must be positive")
        indices_by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            indices_by_label[label].append(index)
        if len(indices_by_label) < ids_per_batch:
            raise ValueError(
                f"a batch needs {ids_per_batch} identities but the dataset has only {len(indices_by_label)}"
            )
        self.indices_by_label = dict(sorted(indices_by_label.items()))
        self.ids_per_batch = ids_per_batch
        self.instances_per_id = instances_per_id
        self.seed = seed
        self.start_batch = start_batch

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.instances_per_id

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices_by_label) // self.ids_per_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch, deterministic in (seed, epoch)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        identities = list(self.indices_by_label)
        rng.shuffle(identities)
        batches = []
        for start in range(0, self.batches_per_epoch * self.ids_per_batch, self.ids_per_batch):
            batch: list[int] = []
            for label in identities[start : start + self.ids_per_batch]:
                pool = self.indices_by_label[label]
                if len(pool) >= self.instances_per_id:
                    batch.extend(rng.sample(pool, self.instances_per_id))
                else:
                    batch.extend(rng.choices(pool, k=self.instances_per_id))
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            yield from self.epoch_batches(epoch)[offset:]
            epoch += 1
            offset = 0
