"""The training loop itself: which rows a batch augments, and training through
torch.compile (same checkpoints, the same model up to the compiler's rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_run import TINY_ARGS

from ichbench import training
from ichbench.cli.app import main
from ichbench.config import RunConfig
from ichbench.errors import UsageError
from ichbench.events import Emitter
from ichbench.interfaces import TrainPlan
from ichbench.lifecycle import Lifecycle
from ichbench.protocol import RunProtocol
from ichbench.store import Store
from ichbench.training import DeviceImages, TrainSettings, predict, train_fold
from ichbench_plugins.backbones import _tiny_cnn

CPU = torch.device("cpu")


def settings(**changes) -> TrainSettings:
    values = dict(epochs=2, batch_size=16, lr=2e-3, patience=5, seed=0, device=CPU)
    return TrainSettings(**{**values, **changes})


def test_batch_augments_exactly_the_given_positions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 1, 16, 16), dtype=np.uint8)
    data = DeviceImages(images, np.zeros(10), CPU)
    index = torch.tensor([7, 2, 5, 0])
    plain = data.batch(index, None, settings(), None)
    generator = torch.Generator().manual_seed(1)
    mixed = data.batch(index, torch.tensor([1, 3]), settings(), generator)
    assert torch.equal(mixed[[0, 2]], plain[[0, 2]])
    assert not torch.equal(mixed[1], plain[1]) and not torch.equal(mixed[3], plain[3])
    expected = (torch.from_numpy(images[[7, 2, 5, 0]]).float() / 255 - 0.5) / 0.5
    assert torch.allclose(plain, expected)
    # no positions given, or an empty tensor of them: nothing is transformed
    assert torch.equal(
        data.batch(index, torch.zeros(0, dtype=torch.long), settings(), generator), plain
    )


def _fold(tiny_dataset, compile: bool) -> tuple[dict, np.ndarray]:
    patients = np.unique(tiny_dataset.patient_ids)
    train_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[:6]))
    val_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[6:]))
    augment = tiny_dataset.labels[train_rows].astype(bool)
    plan = TrainPlan(indices=train_rows, augment=augment)
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    torch.manual_seed(0)
    model = _tiny_cnn(1, 2)
    model.dropout = torch.nn.Identity()  # inductor draws dropout masks from its own generator
    # one batch per epoch and one prediction chunk: a single shape for each compiled graph
    one_batch = settings(compile=compile, batch_size=len(train_rows))
    state, _, history = train_fold(model, plan, data, val_rows, one_batch, Emitter([]), fold=0)
    assert len(history) == 2
    fresh = _tiny_cnn(1, 2)
    fresh.dropout = torch.nn.Identity()
    fresh.load_state_dict(state)  # strict: the keys are the module's own
    return state, predict(fresh, data, val_rows, settings())


def _plain_fold(tiny_dataset, **changes):
    patients = np.unique(tiny_dataset.patient_ids)
    train_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[:6]))
    val_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[6:]))
    plan = TrainPlan(indices=train_rows, augment=np.zeros(len(train_rows), dtype=bool))
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    torch.manual_seed(0)
    train_fold(_tiny_cnn(1, 2), plan, data, val_rows, settings(**changes), Emitter([]), 3)


def test_a_fold_that_takes_no_optimiser_step_is_an_error(tiny_dataset):
    with pytest.raises(UsageError, match=r"fold 3 took no optimiser step.*--batch-size 2"):
        _plain_fold(tiny_dataset, batch_size=1)


def test_a_diverging_loss_stops_the_fold(tiny_dataset):
    with pytest.raises(
        UsageError,
        match=r"^training diverged at fold 3 epoch \d+: .* (is|are) (nan|inf); lower --lr$",
    ):
        _plain_fold(tiny_dataset, lr=1e30, epochs=3)


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tiny_dataset):
    torch._dynamo.reset()
    eager_state, eager_probs = _fold(tiny_dataset, compile=False)
    compiled_state, compiled_probs = _fold(tiny_dataset, compile=True)
    assert not any(k.startswith("_orig_mod") for k in compiled_state)
    assert set(compiled_state) == set(eager_state)
    # TorchInductor fuses and reorders float arithmetic: not bit-equal, but the same
    # training within rounding
    diff = np.abs(compiled_probs - eager_probs).max()
    assert diff < 0.05


def test_compile_is_an_execution_setting_not_part_of_the_config():
    assert RunConfig(compile=True).hash == RunConfig(compile=False).hash
    assert RunConfig(compile=True).as_dict()["compile"] is True


def _main(capsys, *args: str) -> None:
    try:
        main(list(args))
    except SystemExit as exit_info:
        assert exit_info.code in (0, None), capsys.readouterr().err


@pytest.fixture
def dynamo_graphs(monkeypatch):
    """Graphs dynamo captures, with its cheap `eager` backend so that the test does not
    wait for C++ compilation."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(training, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    return lambda: counters["stats"]["unique_graphs"]


def test_run_compile_option_trains_through_torch_compile(capsys, tmp_path, dynamo_graphs):
    db = tmp_path / "runs.duckdb"
    _main(capsys, "run", *TINY_ARGS, "--db", str(db))
    assert dynamo_graphs() == 0
    _main(capsys, "run", *TINY_ARGS, "--db", str(db), "--compile")
    assert dynamo_graphs() >= 1
    _, rows = Store(db, create=False).query(
        "SELECT r.started_at, r.config->>'compile', r.status, r.config_hash, "
        "list(f.compiled ORDER BY f.fold) FROM runs r JOIN folds f USING (run_id) "
        "GROUP BY ALL ORDER BY r.started_at"
    )
    assert [r[1:3] for r in rows] == [("false", "finished"), ("true", "finished")]
    assert rows[0][3] == rows[1][3]  # the same experiment
    assert [r[4] for r in rows] == [[False, False], [True, True]]  # and how each fold ran


@pytest.mark.parametrize(
    "stored, flag, compiled",
    [(False, "--compile", True), (True, "--no-compile", False), (True, None, True)],
)
def test_a_resumed_run_may_change_compile(capsys, tmp_path, dynamo_graphs, stored, flag, compiled):
    db = tmp_path / "runs.duckdb"
    lifecycle = Lifecycle(db)
    job = lifecycle.open(
        RunProtocol(
            RunConfig(
                data="synthetic:10,1,32",
                backbone="tinycnn",
                folds=2,
                epochs=1,
                image_size=32,
                preset="quick",
                device="cpu",
                compile=stored,
            )
        )
    )
    lifecycle.mark(job, "interrupted")
    run_id = job.run_id
    _main(capsys, "run", "--db", str(db), "--resume", run_id, *([flag] if flag else []))
    assert (dynamo_graphs() > 0) == compiled
    store = Store(db, create=False)
    assert store.get_run(run_id)["status"] == "finished"
    _, rows = store.query(f"SELECT compiled FROM folds WHERE run_id = '{run_id}'")
    assert [r[0] for r in rows] == [compiled, compiled]


# ---------------------------------------------------------------- static shapes, fused Adam


def _rows(tiny_dataset) -> tuple[np.ndarray, np.ndarray]:
    patients = np.unique(tiny_dataset.patient_ids)
    train_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[:6]))
    val_rows = np.flatnonzero(np.isin(tiny_dataset.patient_ids, patients[6:]))
    return train_rows, val_rows


def _recomputed_epoch(tiny_dataset, train_rows: np.ndarray, batch_size: int, lr: float) -> dict:
    """One epoch of the paper's training written out by hand (the loop as it was before
    static shapes and fused Adam existed): the batches of the seeded shuffle, the ragged
    last one included, plain Adam, cross-entropy with the plan's class weights."""
    torch.manual_seed(0)
    model = _tiny_cnn(1, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.0]))
    images = torch.from_numpy(np.array(tiny_dataset.images))
    labels = torch.from_numpy(np.array(tiny_dataset.labels, dtype=np.int64))
    rows = torch.from_numpy(train_rows.astype(np.int64))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0 * 1009 + 0))
    model.train()
    for start in range(0, len(rows), batch_size):
        index = rows[order[start : start + batch_size]]
        if len(index) == 1:
            continue
        x = (images[index].float() / 255 - 0.5) / 0.5
        loss = loss_fn(model(x).float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_default_cpu_training_is_the_paper_loop_bit_for_bit(tiny_dataset):
    """Neither static shapes nor the fused optimiser reach a default CPU fold: its weights
    are those of the plain loop, exactly, and its notes say nothing of shapes."""
    train_rows, val_rows = _rows(tiny_dataset)
    batch_size = 16
    assert len(train_rows) % batch_size > 1  # a ragged last batch that the default trains
    plan = TrainPlan(indices=train_rows, augment=np.zeros(len(train_rows), dtype=bool))
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    torch.manual_seed(0)
    chosen = settings(epochs=1, batch_size=batch_size)
    assert not chosen.fixed_shapes and not chosen.graphed
    state, _, _ = train_fold(_tiny_cnn(1, 2), plan, data, val_rows, chosen, Emitter([]), 0)
    expected = _recomputed_epoch(tiny_dataset, train_rows, batch_size, chosen.lr)
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert "static_shapes" not in plan.notes
    optimizer = training.make_optimizer(_tiny_cnn(1, 2), chosen)
    assert not optimizer.defaults.get("fused")


def test_static_shapes_drop_the_ragged_last_batch_and_say_so(tiny_dataset):
    train_rows, val_rows = _rows(tiny_dataset)
    batch_size = 16
    full, rest = divmod(len(train_rows), batch_size)
    assert rest
    plan = TrainPlan(indices=train_rows, augment=np.zeros(len(train_rows), dtype=bool))
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    events = []
    fixed = settings(epochs=2, batch_size=batch_size, static_shapes=True)
    torch.manual_seed(0)
    train_fold(_tiny_cnn(1, 2), plan, data, val_rows, fixed, Emitter([events.append]), 0)
    batches = [e for e in events if e.kind == "batch_finished"]
    assert len(batches) == 2 * full  # every step a full batch, on both epochs
    assert {e.batches for e in batches} == {full}
    assert plan.notes["static_shapes"] == {
        "batch_size": batch_size,
        "last_batch": "dropped",
        "dropped_per_epoch": rest,
        "inference": f"batches of {2 * batch_size}, the last padded",
        "cuda_graphs": False,
    }
    assert training.steps_per_epoch(len(train_rows), batch_size, True) == full
    # a training set smaller than one batch still trains, as one batch
    assert training.steps_per_epoch(5, 7, True) == 1


def test_padded_inference_gives_the_unpadded_probabilities(tiny_dataset):
    _, val_rows = _rows(tiny_dataset)
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    torch.manual_seed(0)
    model = _tiny_cnn(1, 2)
    batch_size = 4
    assert len(val_rows) % (2 * batch_size)  # the last chunk is padded
    plain = predict(model, data, val_rows, settings(batch_size=batch_size))
    padded = predict(model, data, val_rows, settings(batch_size=batch_size, static_shapes=True))
    assert padded.shape == plain.shape == (len(val_rows),)
    np.testing.assert_allclose(padded, plain, rtol=0, atol=1e-6)


def test_static_shapes_default_to_compiled_cuda_training_only():
    assert not settings().fixed_shapes
    assert not settings(compile=True).fixed_shapes  # the CPU compiles without graphs
    cuda = torch.device("cuda")
    assert settings(device=cuda).fixed_shapes is False
    assert settings(device=cuda, compile=True).graphed
    assert not settings(device=cuda, compile=True, static_shapes=False).graphed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_trains_with_the_fused_optimiser():
    cuda = torch.device("cuda")
    model = _tiny_cnn(1, 2).to(cuda)
    assert training.make_optimizer(model, settings(device=cuda)).defaults["fused"] is True
    decayed = training.make_optimizer(model, settings(device=cuda, weight_decay=0.01))
    assert isinstance(decayed, torch.optim.AdamW) and decayed.defaults["fused"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_no_step_inside_an_epoch_waits_for_the_gpu(tiny_dataset):
    """Between an epoch's first and last step nothing reads the device back: CUDA's sync
    debug mode turns any synchronising call there into an error (the epoch's end reads
    the summed loss and validates, so the mode is lifted at its last batch)."""
    cuda = torch.device("cuda")
    train_rows, val_rows = _rows(tiny_dataset)
    plan = TrainPlan(indices=train_rows, augment=tiny_dataset.labels[train_rows].astype(bool))
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, cuda)
    seen = []

    def watch(event) -> None:
        if event.kind == "batch_finished":
            seen.append(event.batch)
            last = event.batch == event.batches
            torch.cuda.set_sync_debug_mode("default" if last else "error")

    try:
        torch.manual_seed(0)
        fold_settings = settings(device=cuda, batch_size=16, epochs=2)
        train_fold(_tiny_cnn(1, 2), plan, data, val_rows, fold_settings, Emitter([watch]), 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(seen) > 4


def test_a_run_compiles_once_not_once_per_fold(tiny_dataset, dynamo_graphs):
    """Each fold builds a new network, and the step compiled for the first is reused by
    the next: no fold after the first captures a graph (TorchDynamo's eager backend
    stands in for Inductor, whose code generation the capture decides)."""
    train_rows, val_rows = _rows(tiny_dataset)
    plan = TrainPlan(indices=train_rows, augment=np.zeros(len(train_rows), dtype=bool))
    data = DeviceImages(tiny_dataset.images, tiny_dataset.labels, CPU)
    graphs = []
    for fold in range(3):
        torch.manual_seed(fold)
        compiled = settings(epochs=1, batch_size=32, compile=True, static_shapes=True)
        train_fold(_tiny_cnn(1, 2), plan, data, val_rows, compiled, Emitter([]), fold)
        graphs.append(dynamo_graphs())
    assert graphs[0] >= 1
    assert graphs[1] == graphs[2] == graphs[0]
