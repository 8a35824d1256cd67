"""The seeded sample stream of training runs: processes share it, a start continues it, seeds follow
the samples' places (dinov2_dense.data.sampling, engine.data.SeededInfiniteSampler)."""

import pickle
from itertools import islice

import pytest
import torch

from dinov2_dense.data.sampling import InfiniteStream, stream_seed


def _take(stream, k: int) -> list[tuple[int, int]]:
    return list(islice(iter(stream), k))


def test_processes_take_turns_in_one_stream_of_permutations():
    one = _take(InfiniteStream(5, seed=3), 15)  # three epochs of 5
    assert [p for p, _ in one] == list(range(15))
    for epoch in range(3):
        indices = [i for _, i in one[5 * epoch:5 * epoch + 5]]
        assert sorted(indices) == list(range(5))
        assert indices == torch.randperm(5, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
    assert [i for _, i in one[:5]] != [i for _, i in one[5:10]]  # each epoch its own order (seed 3)
    ranks = [_take(InfiniteStream(5, seed=3, rank=r, world=3), 5) for r in range(3)]
    assert sorted(sum(ranks, [])) == one
    assert all(p % 3 == r for r, taken in enumerate(ranks) for p, _ in taken)
    assert [i for _, i in _take(InfiniteStream(4, seed=3, shuffle=False), 6)] == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_start_continues_the_stream(world):
    full = [_take(InfiniteStream(7, seed=1, rank=r, world=world), 12) for r in range(world)]
    start = 3 * world  # three samples of each process read
    for r in range(world):
        assert _take(InfiniteStream(7, seed=1, rank=r, world=world, start=start), 9) == full[r][3:]
    # a start that is no multiple of the process count: every process resumes at its first position after it
    after = sorted(sum((_take(InfiniteStream(7, seed=1, rank=r, world=world, start=5), 4) for r in range(world)),
                       []))
    assert after[:4] == sorted(sum(full, []))[5:9]


def test_bad_streams_are_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        InfiniteStream(0, seed=0)
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 processes"):
        InfiniteStream(3, seed=0, rank=2, world=2)


def test_the_sampler_seeds_a_sample_by_its_place_and_the_seed_survives_a_worker():
    from dinov2_dense.engine.data import AUGMENTATION, SampleIndex, SeededInfiniteSampler

    sampler = SeededInfiniteSampler(list(range(6)), seed=9)
    drawn = list(islice(iter(sampler), 8))
    stream = _take(InfiniteStream(6, seed=9), 8)
    assert [int(i) for i in drawn] == [i for _, i in stream]
    assert [i.augment_seed for i in drawn] == [stream_seed(9, AUGMENTATION, p) for p, _ in stream]
    assert len(set(i.augment_seed for i in drawn)) == 8  # each place its own crops, the same image too
    sampler.continue_at(5)
    again = list(islice(iter(sampler), 3))
    assert [(int(i), i.augment_seed) for i in again] == [(int(i), i.augment_seed) for i in drawn[5:8]]
    copy = pickle.loads(pickle.dumps(drawn[0]))  # as a DataLoader worker receives it
    assert type(copy) is SampleIndex and (int(copy), copy.augment_seed) == (int(drawn[0]), drawn[0].augment_seed)


def test_a_seeded_index_gives_the_same_crop_whoever_loads_it(tmp_path):
    """The data set seeds its pipeline from the index's seed: the same place, the same crop, whatever the
    pipeline drew before; another place, another crop."""
    from dinov2_dense.data import ADE20KDataset, seg_train_pipeline
    from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
    from dinov2_dense.engine.data import SampleIndex

    write_ade20k_layout(tmp_path / "ade", 2, 1, config=SceneConfig(size=(96, 96)), seed=0, progress=False)
    data = ADE20KDataset(tmp_path / "ade", split="training",
                         transform=seg_train_pipeline(crop_size=56, scale=(112, 56), seed=0))
    first = data[SampleIndex(1, 1234)]["image"]
    data[0], data[1]  # the pipeline's own stream moves on
    assert torch.equal(data[SampleIndex(1, 1234)]["image"], first)
    assert not torch.equal(data[SampleIndex(1, 4321)]["image"], first)
    assert data[SampleIndex(1, 1234)]["meta"]["index"] == 1 and type(data[SampleIndex(1, 5)]["meta"]["index"]) is int
