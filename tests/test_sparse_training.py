"""Sparse training in the trainer: masks hold their counts, updates zero exactly what they
should, masked weights stay 0, static and drop-fraction-0 agree, and resume is exact."""

import dataclasses
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_execution, model_settings, random_batch, unit_scaled

from scmm.models import CharLM
from scmm.sparsity.training import SparseTraining
from scmm.training import AdamWSettings, Trainer, TrainingSettings
from scmm.training.sparsity_settings import SparsitySettings

SEQUENCES, LENGTH = 4, 16


def _trainer(scheme: str = "regular", steps: int = 40, **sparsity: Any) -> Trainer:
    settings = model_settings("attention")
    model = CharLM(unit_scaled(settings) if scheme == "unit" else settings)
    options = {"sparsity": 0.9, "update_interval": 5, "drop_decay": "constant", **sparsity}
    training = TrainingSettings(
        batch_sequences=SEQUENCES,
        steps=steps,
        iterations_per_loop=5,
        optimiser=AdamWSettings(learning_rate=2**-7, weight_decay=0.1),
        sparsity=SparsitySettings(**options),
    )
    return Trainer(model, training, make_execution(xla=False))


def _masks(trainer: Trainer) -> dict[str, np.ndarray]:
    assert trainer.sparse is not None
    return {k.path: k.mask.numpy().copy() for k in trainer.sparse.kernels}


def _batches(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_batch(5, SEQUENCES, LENGTH, rng) for _ in range(count)]


def test_hidden_weights_are_sparse_and_keep_their_block_counts_through_updates() -> None:
    trainer = _trainer(block_size=4)
    sparse = trainer.sparse
    assert sparse is not None
    assert sparse.paths and all("embedding" not in p and "head" not in p for p in sparse.paths)
    counts = {k.path: k.active for k in sparse.kernels}
    for kernel in sparse.kernels:
        blocks = kernel.grid[0] * kernel.grid[1]
        assert kernel.active == max(1, int(np.floor(0.1 * blocks + 0.5)))
    moved = False
    before = _masks(trainer)
    for batch in _batches(4):
        trainer.train(batch)
        now = _masks(trainer)
        for path, mask in now.items():
            assert int(mask.sum()) == counts[path]
        moved |= any(not np.array_equal(before[p], now[p]) for p in now)
        before = now
    assert moved, "RigL never moved a block in 20 steps at drop fraction 0.3"


def test_masked_weights_stay_exactly_zero_over_50_steps_with_weight_decay() -> None:
    trainer = _trainer(steps=50, update_interval=10)
    assert trainer.sparse is not None
    for batch in _batches(10, seed=1):
        trainer.train(batch)
        for kernel in trainer.sparse.kernels:
            element = trainer.sparse._element_mask(kernel, kernel.mask, tf.float32).numpy()
            weights = np.asarray(kernel.variable.numpy())
            assert np.all(weights[element == 0] == 0)
            # Active weights train; only the blocks grown at an update (at most the drop
            # fraction, 0.3) can still be at their starting 0.
            assert np.count_nonzero(weights[element == 1]) >= 0.69 * element.sum()


def test_an_update_zeroes_dropped_and_grown_blocks_and_keeps_the_rest_bit_for_bit() -> None:
    trainer = _trainer(update_interval=1000, drop_decay="constant")
    sparse = trainer.sparse
    assert sparse is not None
    for batch in _batches(2, seed=2):  # non-zero Adam slots
        trainer.train(batch)
    slots = trainer.optimiser.slots
    before = {k.path: (k.variable.numpy(), k.mask.numpy()) for k in sparse.kernels}
    slots_before = {n: [s.numpy() for s in v] for n, v in slots.items()}
    rng = np.random.default_rng(3)
    grads = [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in trainer.variables]
    tf.function(lambda: sparse.after_step(tf.constant(1000, tf.int64), grads, slots))()
    changed = 0
    for kernel in sparse.kernels:
        weights_before, mask_before = before[kernel.path]
        mask_after = kernel.mask.numpy()
        assert mask_after.sum() == mask_before.sum()
        kept = sparse._element_mask(kernel, mask_before & mask_after, tf.float32).numpy() == 1
        after = sparse._element_mask(kernel, mask_after, tf.float32).numpy() == 1
        weights = kernel.variable.numpy()
        assert np.array_equal(weights[kept], weights_before[kept])
        assert np.all(weights[~kept] == 0)  # dropped (masked now) and grown (start at 0)
        for name, values in slots.items():
            slot, old = values[kernel.index].numpy(), slots_before[name][kernel.index]
            assert np.array_equal(slot[kept], old[kept]), name
            assert np.all(slot[~kept] == 0), name
        changed += int((after & ~kept).sum())
    assert changed > 0


def test_drop_fraction_zero_is_static_sparse_training_bit_for_bit() -> None:
    static, zero = _trainer(update_interval=None), _trainer(drop_fraction=0.0)
    for batch in _batches(3, seed=4):
        np.testing.assert_array_equal(static.train(batch)["loss"], zero.train(batch)["loss"])
    for a, b in zip(static.variables, zero.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_kill_and_resume_reproduces_masks_and_losses() -> None:
    batches = _batches(6, seed=5)
    straight = _trainer(steps=30)
    losses = np.concatenate([straight.train(b)["loss"] for b in batches])
    first = _trainer(steps=30)
    resumed_losses = [first.train(b)["loss"] for b in batches[:3]]
    weights = first.model.get_weight_arrays()
    state = first.state_arrays()
    assert any(k.startswith("sparsity/") for k in state)
    second = _trainer(steps=30)
    second.model.set_weight_arrays(weights)
    second.set_state_arrays(state)
    resumed_losses += [second.train(b)["loss"] for b in batches[3:]]
    np.testing.assert_array_equal(np.concatenate(resumed_losses), losses)
    assert _masks(second).keys() == _masks(straight).keys()
    for path, mask in _masks(straight).items():
        np.testing.assert_array_equal(_masks(second)[path], mask)


def test_a_block_that_does_not_divide_a_kernel_is_refused_before_compute() -> None:
    with pytest.raises(ValueError, match="block"):
        _trainer(block_size=5)
    with pytest.raises(ValueError, match="training.sparsity.include"):
        _trainer(include=["nothing/*"])
    with pytest.raises(ValueError, match="training.sparsity.sparsity must be in \\[0, 1\\)"):
        SparsitySettings(sparsity=1.0).validate()


def test_a_unit_scaled_sparse_model_scales_by_the_active_fan_in() -> None:
    trainer = _trainer("unit")
    assert trainer.sparse is not None
    layers = {
        id(layer): layer
        for layer in trainer.model._flatten_layers(include_self=False, recursive=True)
        if getattr(layer, "densities", None)
    }
    densities = [d for layer in layers.values() for d in layer.densities.values()]
    assert densities and all(d == pytest.approx(0.1, abs=0.02) for d in densities)


def test_erk_puts_the_same_number_of_weights_in_wider_layers_sparser() -> None:
    settings = dataclasses.replace(SparsitySettings(), sparsity=0.8, distribution="erk")
    trainer = _trainer(**dataclasses.asdict(settings))
    sparse = trainer.sparse
    assert isinstance(sparse, SparseTraining)
    sizes = {k.path: k.grid[0] * k.grid[1] for k in sparse.kernels}
    active = sum(k.active for k in sparse.kernels)
    assert active == pytest.approx(0.2 * sum(sizes.values()), abs=len(sizes))
