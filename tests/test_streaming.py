"""Images streamed from the memory-mapped cache give the batches of images held on the
device: one fold trained both ways has the same weights and predictions, bit for bit, and
a run says which of the two it took."""

from __future__ import annotations

import numpy as np
import torch
from cli_run import TINY_ARGS, TINY_CONFIG, error_lines, run_main

from ichbench.config import RunConfig
from ichbench.events import RunWarning
from ichbench.protocol import RunProtocol
from ichbench.streaming import GIB, StreamedImages, device_budget, images_for
from ichbench.training import DeviceImages, TrainSettings


def trained(tmp_path, **changes):
    """One fold of the tiny run: its kept state, predictions, image holder and events."""
    events: list = []
    protocol = RunProtocol(
        RunConfig(**{**TINY_CONFIG, **changes}),
        cache_dir=tmp_path / "cache",
        observers=[events.append],
    )
    dataset = protocol.load_data()
    record, state = protocol.fold_trial(dataset, protocol.split_of(dataset), (0, 0))
    return state, record, protocol._data, events


def test_one_fold_trains_to_the_same_bits_streamed_or_resident(tmp_path):
    recipe = {"context": 1, "augment_all": True, "tta": "flip"}  # every path of a batch
    state_a, record_a, data_a, events_a = trained(tmp_path, **recipe)
    state_b, record_b, data_b, events_b = trained(tmp_path, device_memory=1e-6, **recipe)
    assert type(data_a) is DeviceImages and isinstance(data_b, StreamedImages)
    assert data_b._fd is not None  # read from the cache's file, not a copy in memory
    assert data_b.batches_read_ahead > data_b.batches_read_now  # the trainer rarely waits
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert np.array_equal(record_a.predictions.prob, record_b.predictions.prob)
    assert record_a.threshold == record_b.threshold
    said = [e.message for e in events_b if isinstance(e, RunWarning)]
    assert any(m.startswith("images streamed to cpu batch by batch") for m in said), said
    assert not [e for e in events_a if isinstance(e, RunWarning) and "streamed" in e.message]


def test_a_batch_is_the_same_whatever_its_index(tmp_path):
    """Slices of one order (read ahead), a lone index tensor (read back) and an index with
    repeated and unordered rows all give DeviceImages' floats."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 2, 8, 8), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    labels = rng.integers(0, 2, size=50)
    pids = np.repeat(np.arange(5), 10)
    cpu = torch.device("cpu")
    resident = DeviceImages(mapped, labels, cpu, patient_ids=pids, context=2)
    streamed = StreamedImages(mapped, labels, cpu, patient_ids=pids, context=2, read_ahead=3)
    assert streamed._fd is not None
    for context in (0, 2):
        settings = TrainSettings(
            epochs=1, batch_size=7, lr=1e-3, patience=1, seed=0, device=cpu, context=context
        )
        order = torch.from_numpy(rng.permutation(np.r_[np.arange(50), [3, 3, 49]]))
        for start in range(0, len(order), 7):
            index = order[start : start + 7]
            a = resident.unit_batch(index, None, settings, None)
            b = streamed.unit_batch(index, None, settings, None)
            assert torch.equal(a, b)
        lone = torch.tensor([9, 0, 1, 2, 40, 41, 40])
        assert torch.equal(
            resident.unit_batch(lone, None, settings, None),
            streamed.unit_batch(lone, None, settings, None),
        )
    in_memory = StreamedImages(np.asarray(images), labels, cpu)  # not a mapped file
    assert in_memory._fd is None
    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, patience=1, seed=0, device=cpu)
    index = torch.tensor([5, 1, 5, 30])
    assert torch.equal(
        in_memory.unit_batch(index, None, settings, None),
        resident.unit_batch(index, None, settings, None),
    )
    streamed.close()


def test_the_budget_decides_where_the_images_live():
    images = np.zeros((4, 1, 512, 512), dtype=np.uint8)  # 1 MiB
    labels = np.zeros(4, dtype=np.int64)
    cpu = torch.device("cpu")
    assert device_budget(cpu, None) is None  # no limit on the CPU
    assert device_budget(cpu, 2) == 2 * GIB
    assert type(images_for(images, labels, cpu)) is DeviceImages
    assert type(images_for(images, labels, cpu, device_memory=1 / 1024)) is DeviceImages
    streamed = images_for(images, labels, cpu, device_memory=1 / 2048)
    assert isinstance(streamed, StreamedImages)
    assert streamed.describe().endswith(
        "they take 0.000977 GiB, more than the 0.000488 GiB allowed (--device-memory)"
    )


def test_device_memory_is_a_setting_of_the_machine():
    plain, limited = RunConfig(), RunConfig(device_memory=8)
    assert plain.hash == limited.hash  # the same configuration
    assert RunConfig.from_dict(limited.as_dict()).device_memory == 8


def test_a_device_memory_of_zero_is_refused(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "run", *TINY_ARGS, "--db", str(tmp_path / "r.duckdb"), "--device-memory", "0"
    )
    assert code == 2
    assert error_lines(err) == ["Error: --device-memory 0.0: must be above 0 GiB"]
    assert not (tmp_path / "r.duckdb").exists()


def test_a_resumed_run_may_change_its_device_memory(capsys, tmp_path):
    """A setting of the machine: --resume accepts it, where it refuses any setting."""
    db = str(tmp_path / "r.duckdb")
    _, _, err = run_main(capsys, "run", "--resume", "nope", "--db", db, "--device-memory", "4")
    assert "cannot change it" not in err and error_lines(err)
    _, _, err = run_main(capsys, "run", "--resume", "nope", "--db", db, "--epochs", "4")
    assert "--epochs cannot change it" in err
