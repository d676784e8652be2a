"""The resumable, rank-sharded loader: no duplicates, no gaps, exact continuation from its state."""

from __future__ import annotations

import pytest

from avdm.data import SyntheticLatentDataset
from avdm.data.resumable import ResumableDataLoader


def _epoch(loader):
    return [i for batch in loader for i in batch.tolist()]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partition_each_epoch(world):
    data = list(range(24))
    shards = [
        _epoch(ResumableDataLoader(data, batch_size=2, seed=5, num_replicas=world, rank=r))
        for r in range(world)
    ]
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat)) == 24 - 24 % (2 * world)
    assert shards[0] != sorted(shards[0])  # shuffled


def test_epochs_differ_and_repeat_under_the_seed():
    first, second = (
        ResumableDataLoader(list(range(16)), 4, seed=1),
        ResumableDataLoader(list(range(16)), 4, seed=1),
    )
    a = [_epoch(first), _epoch(first)]
    b = [_epoch(second), _epoch(second)]
    assert a == b and a[0] != a[1] and sorted(a[0]) == list(range(16))


def test_a_loop_that_takes_exactly_len_batches_gets_a_full_new_epoch_each_time():
    # Lightning's fit loop stops pulling from a sized loader after len(loader) batches.
    loader = ResumableDataLoader(list(range(16)), 4, seed=1)
    epochs = []
    for _ in range(3):
        iterator = iter(loader)
        epochs.append([i for _ in range(len(loader)) for i in next(iterator).tolist()])
    assert all(sorted(e) == list(range(16)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert loader.state_dict() == {"epoch": 2, "batches": 4}


def test_state_resumes_mid_epoch_exactly():
    straight = ResumableDataLoader(list(range(20)), 2, seed=3)
    expected = _epoch(straight) + _epoch(straight)
    run = ResumableDataLoader(list(range(20)), 2, seed=3)
    seen = _epoch(run)
    it = iter(run)
    seen += [i for _ in range(3) for i in next(it).tolist()]
    state = run.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    resumed = ResumableDataLoader(list(range(20)), 2, seed=3)
    resumed.load_state_dict(state)
    assert seen + _epoch(resumed) == expected


def test_synthetic_clips_are_deterministic_and_follow_their_caption():
    data = SyntheticLatentDataset((4, 6, 16, 16), num_samples=8, seed=0)
    a, b = data[3], data[3]
    assert a["captions"] == b["captions"] and (a["latents"] == b["latents"]).all()
    clip, caption = data[5]["latents"], data[5]["captions"]
    energy = clip.abs().sum(0)  # (F, H, W)
    ys, xs = [], []
    for frame in energy:
        idx = int(frame.flatten().argmax())
        ys.append(idx // 16)
        xs.append(idx % 16)
    direction = caption.rsplit(" ", 1)[1]
    moved = {"left": xs[0] > xs[-1], "right": xs[-1] > xs[0], "up": ys[0] > ys[-1], "down": ys[-1] > ys[0]}
    assert moved[direction], (caption, xs, ys)
    with pytest.raises(ValueError, match="latent_shape"):
        SyntheticLatentDataset((4, 6, 16))


def test_stored_latent_modules_check_batch_size_and_the_model_latent_shape():
    from types import SimpleNamespace

    from avdm.data.stored_latents import StoredLatentDataModule
    from avdm.errors import AvdmUserError, ConfigError

    class Stored(StoredLatentDataModule):
        what, mismatch_hint = "clips", "use a cache written with this model config"

        def __init__(self, batch_size: int) -> None:
            super().__init__()
            self.dataset = type(
                "D", (), {"root": "cache", "latent_shape": (4, 8, 16, 16), "__len__": lambda self: 3}
            )()
            self._configure(batch_size, 0, 0)

    with pytest.raises(ConfigError, match=r"data.batch_size=4 exceeds the 3 clips in 'cache'"):
        Stored(4)
    module = Stored(2)
    module.trainer = SimpleNamespace(lightning_module=SimpleNamespace(latent_shape=(4, 16, 64, 64)))
    with pytest.raises(
        AvdmUserError, match=r"holds latents \[4, 8, 16, 16\] but the model's are \[4, 16, 64, 64\]"
    ):
        module.setup("fit")
    module.trainer = SimpleNamespace(lightning_module=SimpleNamespace(latent_shape=(4, 8, 16, 16)))
    module.setup("fit")
