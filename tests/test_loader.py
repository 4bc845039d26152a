"""BatchLoader: coverage, determinism, resume, normalization, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistlab.augment import Augment, augment_preset
from mnistlab.loader import BatchLoader

MEAN, STD = 0.1307, 0.3081
N = 103  # not a multiple of the batch size: the last batch is partial


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
    return images, np.arange(N, dtype=np.int64)  # label = sample index, to identify samples


def make(data, **kw) -> BatchLoader:
    kw = {"batch_size": 16, "mean": MEAN, "std": STD, **kw}
    return BatchLoader(*data, **kw)


def epoch_labels(loader: BatchLoader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


@pytest.mark.parametrize("batch_size", [16, 30, 100, 103, 300])  # 30, 100: several per chunk
def test_every_sample_exactly_once_per_epoch(data, batch_size):
    loader = make(data, batch_size=batch_size)
    assert len(loader) == -(-N // batch_size)
    sizes = [batch_size] * (N // batch_size) + ([N % batch_size] if N % batch_size else [])
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == len(loader)
        assert [len(y) for _, y in batches] == [len(x) for x, _ in batches] == sizes
        seen = torch.cat([y for _, y in batches])
        assert torch.equal(seen.sort().values, torch.arange(N))


def test_drop_last(data):
    loader = make(data, drop_last=True)
    assert len(loader) == 6
    seen = epoch_labels(loader)
    assert len(seen) == 96 and len(seen.unique()) == 96


def test_no_shuffle_is_in_order(data):
    loader = make(data, shuffle=False)
    assert torch.equal(epoch_labels(loader), torch.arange(N))
    assert torch.equal(epoch_labels(loader), torch.arange(N))


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_are_normalized_and_match_their_labels(data, shuffle):
    images, _ = data
    for x, y in make(data, batch_size=50, shuffle=shuffle):  # 50: two batches from one chunk
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 1, 28, 28)
        want = (torch.from_numpy(images[y.numpy()]).float()[:, None] / 255 - MEAN) / STD
        torch.testing.assert_close(x, want, rtol=0, atol=1e-5)


def test_one_thread_and_thread_pool_paths_agree(data):
    # ops above torch's parallel grain run in its thread pool: same results either way
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = list(make(data, batch_size=100))
        torch.set_num_threads(2)
        pool = list(make(data, batch_size=100))
    finally:
        torch.set_num_threads(threads)
    for (x1, y1), (x2, y2) in zip(one, pool, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_same_seed_same_batches_and_orders_differ_by_epoch_and_seed(data):
    a, b = make(data, seed=3), make(data, seed=3)
    orders = []
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        orders.append(a.order(a.epoch - 1))
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(make(data, seed=4).order(0), orders[0])


def test_epoch_counter_and_settable_epoch_replays_an_epoch(data):
    a = make(data, seed=1)
    runs = [epoch_labels(a) for _ in range(3)]
    assert a.epoch == 3
    b = make(data, seed=1)
    b.epoch = 2  # resume: epoch 2's order depends only on (seed, 2)
    assert torch.equal(epoch_labels(b), runs[2])
    assert b.epoch == 3


def test_resume_with_augmentation_is_exact(data):
    def loader():
        return make(data, seed=5, augment=Augment(augment_preset("full"), seed=5))

    a = loader()
    list(a)  # epoch 0
    state = a.state_dict()
    epoch1 = [x for x, _ in a]
    b = loader()
    b.load_state_dict(state)
    for x, (xb, _) in zip(epoch1, b, strict=True):
        assert torch.equal(x, xb)


def test_augmented_batches_keep_background_and_shape(data):
    images, _ = data
    blank = np.zeros_like(images)
    loader = make((blank, data[1]), augment=Augment(augment_preset("full"), seed=0))
    for x, _ in loader:
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        # augmentation works on the raw scale: padding and erasing give background, which
        # normalizes to -mean/std like every other blank pixel
        torch.testing.assert_close(x, torch.full_like(x, -MEAN / STD), rtol=0, atol=1e-6)


def test_shards_partition_each_epoch(data):
    world = 3
    shards = [make(data, seed=2).shard(r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of batches on every rank
    seen = torch.cat([epoch_labels(s) for s in shards])
    assert len(seen) == 35 * world  # ceil(103 / 3) each, padded by wrapping around
    assert torch.equal(seen.unique(), torch.arange(N))
    full = make(data, seed=2).order(0)
    for r, s in enumerate(shards):
        assert torch.equal(s.order(0), torch.cat([full, full[:2]])[r::world])


def test_fraction_takes_a_fresh_random_subset_each_epoch(data):
    loader = make(data, fraction=0.5, seed=3)
    assert loader.num_samples == 51 and len(loader) == 4  # floor(0.5 * 103), in batches of 16
    subsets = []
    for epoch in range(3):
        seen = epoch_labels(loader)
        assert len(seen) == 51 and len(seen.unique()) == 51  # no image twice in an epoch
        assert torch.equal(seen, make(data, seed=3).order(epoch)[:51])  # the head of its order
        subsets.append(set(seen.tolist()))
    assert subsets[0] != subsets[1] != subsets[2]
    assert len(subsets[0] | subsets[1] | subsets[2]) > 51  # later epochs see other images
    # under sharding the ranks split the same subset, padded by wrapping around
    shards = [make(data, fraction=0.5, seed=3).shard(r, 2) for r in range(2)]
    assert {len(s) for s in shards} == {2}  # ceil(51 / 2) = 26 each: 2 batches of 16
    both = torch.cat([s.order(0) for s in shards])
    assert set(both.tolist()) == subsets[0] and len(both) == 52


def test_rejects_bad_input(data):
    images, labels = data
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.astype(np.float32), labels, batch_size=4, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="labels"):
        BatchLoader(images, labels[:-1], batch_size=4, mean=MEAN, std=STD)
    for fraction, shuffle in [(0.0, True), (1.5, True), (0.5, False)]:
        with pytest.raises(ValueError, match="fraction"):
            make(data, fraction=fraction, shuffle=shuffle)


def test_real_digits_normalize_to_zero_mean_unit_std():
    from mnistlab import data

    try:
        ds = data.load("mnist-5k", "train")
    except data.DataError as e:
        pytest.skip(str(e))
    x = torch.cat(
        [x for x, _ in BatchLoader(ds.images, ds.labels, batch_size=500, mean=ds.mean, std=ds.std)]
    )
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_matches_cpu(data):
    cpu = make(data, augment=Augment(augment_preset("full"), seed=0))
    gpu = make(data, device="cuda", augment=Augment(augment_preset("full"), seed=0))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.device.type == "cuda"
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), rtol=0, atol=1e-4)
