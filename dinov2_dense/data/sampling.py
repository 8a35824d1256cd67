"""The endless, seeded sample stream of an iteration-based training run.

A run reads one endless stream of samples: its epoch ``e`` is a permutation of the data set drawn from
``seed + e`` (or the data set in order, without shuffling), and process ``r`` of ``w`` takes the
stream's positions ``r, r + w, r + 2w, ...``. A sample's augmentation is seeded from the run's seed
and its position alone (:func:`stream_seed`), not from the DataLoader worker that makes it nor from
the iteration a run started at. So a resumed run starts the stream where the checkpoint left it,
without loading the samples before, and draws what the uninterrupted run drew; and the number of
DataLoader workers changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def stream_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that is a function of ``seed`` and ``keys`` alone (e.g. a stream's number and a
    sample's position in it): independent streams from one run seed."""
    return int(np.random.SeedSequence((int(seed), *map(int, keys))).generate_state(1)[0])


class InfiniteStream(torch.utils.data.Sampler):
    """Process ``rank`` of ``world``'s share of the endless stream over ``n`` samples, from the stream's
    position ``start`` on (the samples all processes have already read: a resume). Yields
    ``(position, index)``: the sample's place in the stream of all processes, and its index."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0, shuffle: bool = True):
        if n < 1:
            raise ValueError("an endless sample stream needs a data set of at least one sample")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of the {world} processes")
        if start < 0:
            raise ValueError(f"start {start}: a position in the stream is >= 0")
        self.n, self.seed, self.rank, self.world, self.start, self.shuffle = n, int(seed), rank, world, start, shuffle

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The indices of the stream's epoch ``epoch``, in order."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # this process's first position at or after ``start``
        i = self.start + (self.rank - self.start) % self.world
        while True:
            epoch, offset = divmod(i, self.n)
            order = self.epoch_order(epoch).tolist()
            while offset < self.n:
                yield i, order[offset]
                offset += self.world
                i += self.world
            # the next epoch starts where the stride left this one

    def __len__(self) -> int:
        return self.n
