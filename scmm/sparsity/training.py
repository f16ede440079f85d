"""Sparse training of a model: masks as state, masked updates, and the periodic RigL update.

``SparseTraining`` is what the trainer holds when ``training.sparsity.sparsity > 0``:

- **which kernels**: hidden weights (role ``weight`` in the per-parameter table: never
  embeddings, norms, biases or the readout) whose path matches one of ``include``; each viewed
  as its (fan-in, rest) matrix (``blocks.as_matrix``), a block mask per kernel;
- **how sparse**: ``distribution`` densities, exactly ``round(d · blocks)`` active blocks,
  the initial pattern uniformly random (stateless, per ``seed``). Each kernel's layer learns
  its density (``ScaledLayer.densities``), so unit-scaled op sets scale by the active fan-in
  and the plain one starts from Glorot rescaled by density (``OpSet.sparse_init_factor``);
- **masked updates**: the optimiser sees masked gradients, and after every step the kernels
  are multiplied by their masks, so masked weights are exactly 0 (no update, no weight
  decay: decay of 0 is 0);
- **the update** (every ``update_interval`` steps, inside the compiled step under
  ``tf.cond``): ``update.rigl_update`` on block L1 and the pooled *dense* gradient of that
  step; dropped and grown blocks have weights and every optimiser slot set to 0, kept ones
  keep theirs bit for bit;
- **state**: masks (and which blocks were ever active) are non-trainable variables, saved with
  the optimiser state (``state_arrays``), so a resumed run continues exactly.
"""

import dataclasses
import fnmatch
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ..parameters import ParameterTable
from ..training.sparsity_settings import SparsitySettings
from .blocks import as_matrix, block_grid, block_l1, kernel_mask, pool_blocks
from .distribution import active_blocks, initial_mask, layer_densities
from .schedule import drop_count, drop_fraction, is_update_step
from .update import rigl_update

STATE_PREFIX = "sparsity/"


@dataclasses.dataclass
class SparseKernel:  # pylint: disable=too-many-instance-attributes
    """One sparse kernel: where it lives and its mask."""

    path: str
    index: int
    """Position in the trainer's variables (and gradients)."""
    variable: Any
    fan_in_dims: int
    grid: tuple[int, int]
    active: int
    """Active blocks (constant)."""
    mask: tf.Variable
    """(R/b, C/b) bool: the active blocks."""
    ever_active: tf.Variable
    """(R/b, C/b) bool: blocks active at any update so far."""

    @property
    def density(self) -> float:
        """The fraction of blocks (and weights) that is active."""
        return self.active / (self.grid[0] * self.grid[1])


def _fan_in_dims(shape: Sequence[int], fan_in: Optional[int], path: str) -> int:
    """How many leading dims multiply to ``fan_in`` (the matrix view's rows)."""
    product = 1
    for dims, size in enumerate(shape, start=1):
        product *= int(size)
        if product == fan_in and dims < len(shape):
            return dims
    raise ValueError(
        f"sparse kernel {path!r}: its fan-in {fan_in} is not a product of leading dims of"
        f" its shape {tuple(shape)}"
    )


def _owners(model: Any) -> dict[int, tuple[Any, str]]:
    """``{id(variable): (layer, attribute)}`` for the variables layers hold as attributes."""
    owners: dict[int, tuple[Any, str]] = {}
    walk = model._flatten_layers  # pylint: disable=protected-access
    for layer in walk(include_self=True, recursive=True):
        for name, value in vars(layer).items():
            if hasattr(value, "path") and hasattr(value, "assign"):
                owners.setdefault(id(value), (layer, name))
    return owners


class SparseTraining:
    """Masks of a model's sparse kernels and their updates (module docstring)."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        model: Any,
        variables: Sequence[Any],
        parameters: ParameterTable,
        settings: SparsitySettings,
        total_steps: int,
    ):
        settings.validate()
        self.settings = settings
        self.end_step = max(1, int(round(settings.end_fraction * total_steps)))
        candidates = [
            (index, v)
            for index, v in enumerate(variables)
            if v.path in parameters and parameters[v.path].role == "weight"
        ]
        chosen = [
            (i, v)
            for i, v in candidates
            if any(fnmatch.fnmatch(v.path, g) for g in settings.include)
        ]
        if not chosen:
            raise ValueError(
                f"training.sparsity.include {settings.include} matches none of the hidden"
                f" weights {[v.path for _, v in candidates]}"
            )
        owners = _owners(model)
        shapes, dims = [], []
        for _, variable in chosen:
            row = parameters[variable.path]
            dims.append(_fan_in_dims(tuple(variable.shape), row.fan_in, variable.path))
            rows = int(np.prod(variable.shape[: dims[-1]]))
            shapes.append((rows, int(np.prod(variable.shape)) // rows))
            block_grid(shapes[-1], settings.block_size, name=variable.path)  # fails early
        densities = layer_densities(shapes, settings.sparsity, settings.distribution)
        self.kernels: list[SparseKernel] = []
        for number, ((index, variable), shape, fan_in_dims, density) in enumerate(
            zip(chosen, shapes, dims, densities)
        ):
            grid = block_grid(shape, settings.block_size, name=variable.path)
            active = active_blocks(shape, density, settings.block_size, name=variable.path)
            mask = initial_mask(grid, active, [settings.seed, number])
            name = variable.path.replace("/", ".")
            kernel = SparseKernel(
                variable.path,
                index,
                variable,
                fan_in_dims,
                grid,
                active,
                tf.Variable(mask, trainable=False, name=f"{name}.mask"),
                tf.Variable(mask, trainable=False, name=f"{name}.ever_active"),
            )
            self.kernels.append(kernel)
            self._start(kernel, owners.get(id(variable)))

    def _start(self, kernel: SparseKernel, owner: Optional[tuple[Any, str]]) -> None:
        """Mask the fresh kernel and tell its layer the density."""
        factor = 1.0
        if owner is not None and hasattr(owner[0], "densities"):
            layer, attribute = owner
            layer.densities[attribute] = kernel.density
            factor = layer.ops.sparse_init_factor(kernel.density)
        value = tf.convert_to_tensor(kernel.variable)
        mask = self._element_mask(kernel, kernel.mask, value.dtype)
        kernel.variable.assign(value * mask * tf.cast(factor, value.dtype))

    def _element_mask(self, kernel: SparseKernel, block_mask: Any, dtype: tf.DType) -> tf.Tensor:
        shape = tuple(kernel.variable.shape)
        mask = kernel_mask(block_mask, self.settings.block_size, shape, kernel.fan_in_dims)
        return tf.cast(mask, dtype)

    @property
    def paths(self) -> list[str]:
        """The sparse kernels' paths."""
        return [k.path for k in self.kernels]

    # Inside the compiled step ----------------------------------------------------------------

    def mask_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """The gradients the optimiser sees: masked kernels' entries zeroed."""
        out = list(grads)
        for kernel in self.kernels:
            grad = tf.convert_to_tensor(out[kernel.index])
            out[kernel.index] = grad * self._element_mask(kernel, kernel.mask, grad.dtype)
        return out

    def after_step(self, step: tf.Tensor, dense_grads: Sequence[Any], slots: Mapping) -> None:
        """Hold masked weights at 0, then (on update steps) move the masks.

        ``step``: optimiser steps taken (after this one); ``dense_grads``: this step's unmasked
        gradients; ``slots``: the optimiser's ``{slot name: [variable per trainer index]}``.
        """
        for kernel in self.kernels:
            value = tf.convert_to_tensor(kernel.variable)
            kernel.variable.assign(value * self._element_mask(kernel, kernel.mask, value.dtype))
        interval = self.settings.update_interval
        if interval is None or self.settings.drop_fraction == 0.0:
            return
        fraction = drop_fraction(
            step,
            schedule=self.settings.drop_decay,
            alpha=self.settings.drop_fraction,
            end_step=self.end_step,
            zero_steps=self.settings.zero_steps,
            phase=self.settings.phase,
            period=self.settings.period,
        )
        due = tf.logical_and(is_update_step(step, interval), fraction > 0.0)

        def update() -> tf.Tensor:
            for number, kernel in enumerate(self.kernels):
                self._update(number, kernel, step, fraction, dense_grads[kernel.index], slots)
            return tf.constant(True)

        tf.cond(due, update, lambda: tf.constant(False))

    def _update(  # pylint: disable=too-many-arguments
        self,
        number: int,
        kernel: SparseKernel,
        step: tf.Tensor,
        fraction: tf.Tensor,
        dense_grad: Any,
        slots: Mapping,
    ) -> None:
        block = self.settings.block_size
        weight = tf.cast(
            as_matrix(tf.convert_to_tensor(kernel.variable), kernel.fan_in_dims), tf.float32
        )
        grad_score = None
        if self.settings.regrow == "gradient":
            grad = tf.cast(
                as_matrix(tf.convert_to_tensor(dense_grad), kernel.fan_in_dims), tf.float32
            )
            grad_score = pool_blocks(grad, block, self.settings.pooling)
        result = rigl_update(
            kernel.mask,
            block_l1(weight, block),
            grad_score,
            drop_count(fraction, kernel.active),
            exclude=self.settings.regrow_exclude,
            regrow=self.settings.regrow,
            seed=tf.stack([tf.constant(self.settings.seed * 7919 + number, tf.int64), step]),
        )
        new_mask = tf.cast(result.mask, tf.bool)
        # Weights and slots of dropped and grown blocks become 0; kept ones are multiplied by
        # exactly 1 (unchanged bit for bit).
        keep = tf.logical_and(new_mask, tf.logical_not(result.grown))
        value = tf.convert_to_tensor(kernel.variable)
        kernel.variable.assign(value * self._element_mask(kernel, keep, value.dtype))
        for variables in slots.values():
            slot = variables[kernel.index]
            slot.assign(slot * self._element_mask(kernel, keep, slot.dtype))
        kernel.mask.assign(new_mask)
        kernel.ever_active.assign(tf.logical_or(kernel.ever_active, new_mask))

    # Host API ----------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """``sparsity/<path>/mask`` and ``sparsity/<path>/ever_active`` (bool)."""
        state = {}
        for kernel in self.kernels:
            state[f"{STATE_PREFIX}{kernel.path}/mask"] = kernel.mask.numpy()
            state[f"{STATE_PREFIX}{kernel.path}/ever_active"] = kernel.ever_active.numpy()
        return state

    def set_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from ``state_arrays()``; names and shapes must match exactly."""
        expected = self.state_arrays()
        if set(state) != set(expected):
            raise ValueError(
                f"sparsity state differs: missing {sorted(set(expected) - set(state))},"
                f" unexpected {sorted(set(state) - set(expected))}"
            )
        for key, value in expected.items():
            if np.shape(state[key]) != value.shape:
                raise ValueError(
                    f"sparsity state {key}: shape {np.shape(state[key])} != {value.shape}"
                )
        for kernel in self.kernels:
            kernel.mask.assign(np.asarray(state[f"{STATE_PREFIX}{kernel.path}/mask"], bool))
            kernel.ever_active.assign(
                np.asarray(state[f"{STATE_PREFIX}{kernel.path}/ever_active"], bool)
            )

    def summary(self) -> dict[str, Any]:
        """Per kernel: density, active blocks, and the fraction of its weights ever active."""
        rows = {}
        for kernel in self.kernels:
            ever = float(np.mean(kernel.ever_active.numpy()))
            rows[kernel.path] = {
                "density": kernel.density,
                "active_blocks": kernel.active,
                "blocks": kernel.grid[0] * kernel.grid[1],
                "ever_active": ever,
            }
        return rows
