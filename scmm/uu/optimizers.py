"""``scmm.uu.AdamW``: Keras's AdamW with u-muP's per-parameter learning rates.

Each variable's learning rate is the global one times its u-muP multiplier
(``scmm.schemes.umup_rules``, from the role and fan-in its layer declared and its depth):

| role | multiplier |
|---|---|
| ``weight`` | ``fan_in^-1/2``, times ``L^-1/2`` in a residual branch |
| ``bias``, ``gain``, ``offset`` | ``L^-1/2`` in a branch, else 1 |
| ``embedding`` | ``d^-1/2`` (d the embedding width) |
| ``readout`` | 1 |

The multipliers are Python constants looked up by variable path when the optimiser is built:
no parameter group per tensor, and the step compiles under ``jit_compile`` like Keras's own.

Weight decay (Keras's AdamW decays ``w -= lr(t) * weight_decay * w`` before the Adam step):

- ``independent_weight_decay=True`` (the PyTorch library's default, ``wd_p = wd / lr_p``):
  ``w -= weight_decay * s(t) * m_wd * w`` with ``s(t) = lr(t) / peak_learning_rate`` the
  schedule factor, so the decay per step does not move with the peak learning rate or with a
  parameter's learning-rate multiplier (it still follows the schedule);
- ``False`` (decoupled AdamW on each parameter's own rate, as torch with ``lr_p``):
  ``w -= lr(t) * m_lr * weight_decay * m_wd * w``.

``m_wd`` is the table row's ``weight_decay_multiplier`` (1 unless a scheme set it). Keras's
``exclude_from_weight_decay`` is honoured.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional, Union

import keras
from keras import ops

from ..parameters import ParameterTable
from ..schemes import umup_rules
from .base import PACKAGE
from .parameter_table import KerasParameterTable, parameter_table

READOUT_CONSTRAINTS = ("none", "forward")


@dataclasses.dataclass(frozen=True)
class EffectiveRate:
    """One parameter's rates at the optimiser's current step."""

    learning_rate: float
    """The global learning rate now times the parameter's multiplier."""
    learning_rate_multiplier: float
    weight_decay: float
    """The fraction of the weight removed by decay this step (w -= weight_decay * w)."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with u-muP learning-rate multipliers per variable.

    Args (beyond Keras's AdamW, whose arguments and defaults it keeps):
        parameters: the model (built from ``scmm.uu`` layers; its table is made when the
            optimiser is built) or a ``ParameterTable`` (``scmm.uu.parameter_table(model)``).
        readout_constraint: "none" (u-muP's default) or "forward"; must match the readout's
            constraint (the Adam rules are the same for both; it is checked and stored).
        independent_weight_decay: decay per step ``weight_decay * s(t)`` (module docstring).
        peak_learning_rate: the rate at which the independent decay per step is
            ``weight_decay``; default the float learning rate, or a schedule's
            ``warmup_target`` / ``initial_learning_rate``.
        learning_rate_multipliers, weight_decay_multipliers: ``{variable path: multiplier}``
            instead of ``parameters`` (what ``get_config`` stores).
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-locals
        self,
        learning_rate: Any = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        *,
        parameters: Union[ParameterTable, keras.Model, None] = None,
        readout_constraint: str = "none",
        independent_weight_decay: bool = True,
        peak_learning_rate: Optional[float] = None,
        learning_rate_multipliers: Optional[Mapping[str, float]] = None,
        weight_decay_multipliers: Optional[Mapping[str, float]] = None,
        **kwargs: Any,
    ):
        if readout_constraint not in READOUT_CONSTRAINTS:
            raise ValueError(
                f"readout_constraint={readout_constraint!r}; expected one of"
                f" {', '.join(READOUT_CONSTRAINTS)} (the readout's constraint)"
            )
        source = _table_source(parameters, learning_rate_multipliers)
        peak = _peak_learning_rate(learning_rate, peak_learning_rate, independent_weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            **kwargs,
        )
        self.readout_constraint = readout_constraint
        self.independent_weight_decay = bool(independent_weight_decay)
        self.peak_learning_rate = peak
        self._make_table = source
        self._lr_by_path: Optional[dict[str, float]] = None
        self._wd_by_path: Optional[dict[str, float]] = None
        if learning_rate_multipliers is not None:
            self._lr_by_path = {k: float(v) for k, v in learning_rate_multipliers.items()}
            wd = weight_decay_multipliers or {}
            self._wd_by_path = {k: float(wd.get(k, 1.0)) for k in self._lr_by_path}
        elif isinstance(source, ParameterTable):
            self._set_multipliers(source)
        self._lr_multipliers: tuple[float, ...] = ()
        self._wd_multipliers: tuple[float, ...] = ()

    def _set_multipliers(self, table: ParameterTable) -> None:
        lr = umup_rules.learning_rate_multipliers(
            table, table.layers, "adamw", self.readout_constraint
        )
        wd = {row.path: float(row.weight_decay_multiplier) for row in table}
        if isinstance(table, KerasParameterTable):
            lr.update({path: 1.0 for path in table.unknown})
            wd.update({path: 1.0 for path in table.unknown})
        self._lr_by_path, self._wd_by_path = lr, wd

    def _multipliers(self) -> tuple[dict[str, float], dict[str, float]]:
        """``({path: lr multiplier}, {path: wd multiplier})``, making the table if needed."""
        if self._lr_by_path is None:
            assert callable(self._make_table)
            self._set_multipliers(self._make_table())
        assert self._lr_by_path is not None and self._wd_by_path is not None
        return self._lr_by_path, self._wd_by_path

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        lr, wd = self._multipliers()
        keys = _match_paths([v.path for v in var_list], lr)
        missing = [path for path, key in keys.items() if key is None]
        if missing:
            raise ValueError(
                f"uu.AdamW has no u-muP multiplier for {len(missing)} variable(s):"
                f" {', '.join(missing[:10])}. Pass parameters= the model being trained (or"
                " parameter_table(model, allow_unknown=True) to train unknown ones at 1)"
            )
        super().build(var_list)
        # Aligned with Keras's variable indices (_get_variable_index) for update_step.
        self._lr_multipliers = tuple(lr[str(keys[v.path])] for v in var_list)
        self._wd_multipliers = tuple(wd[str(keys[v.path])] for v in var_list)

    def _apply_weight_decay(self, variables: Any) -> None:
        """Nothing here: ``update_step`` decays each variable with its own factor."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        rate = ops.cast(learning_rate, variable.dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            decay = self._decay_factor(index, rate)
            self.assign_sub(variable, ops.multiply(variable, ops.cast(decay, variable.dtype)))
        super().update_step(gradient, variable, rate * self._lr_multipliers[index])

    def _decay_factor(self, index: int, rate: Any) -> Any:
        """The fraction of the weight decay removes this step (module docstring)."""
        weight_decay = self.weight_decay * self._wd_multipliers[index]
        if self.independent_weight_decay:
            assert self.peak_learning_rate is not None
            return rate * (weight_decay / self.peak_learning_rate)
        return rate * (weight_decay * self._lr_multipliers[index])

    def effective_rates(self) -> dict[str, EffectiveRate]:
        """``{variable path: rates now}``: the table of effective learning rate and weight
        decay per parameter (the debugging view the PyTorch library's users asked for)."""
        lr, wd = self._multipliers()
        rate = float(ops.convert_to_numpy(self.learning_rate))
        excluded = set()
        if self.built:
            excluded = {v.path for v in self._trainable_variables if not self._use_weight_decay(v)}
        rates = {}
        for path, multiplier in lr.items():
            decay = 0.0
            if self.weight_decay and path not in excluded:
                if self.independent_weight_decay:
                    assert self.peak_learning_rate is not None
                    decay = rate * self.weight_decay * wd[path] / self.peak_learning_rate
                else:
                    decay = rate * multiplier * self.weight_decay * wd[path]
            rates[path] = EffectiveRate(rate * multiplier, multiplier, decay)
        return rates

    def get_config(self) -> dict[str, Any]:
        lr, wd = self._multipliers()
        return {
            **super().get_config(),
            "readout_constraint": self.readout_constraint,
            "independent_weight_decay": self.independent_weight_decay,
            "peak_learning_rate": self.peak_learning_rate,
            "learning_rate_multipliers": dict(lr),
            "weight_decay_multipliers": dict(wd),
        }


def _match_paths(paths: list[str], stored: Mapping[str, float]) -> dict[str, Optional[str]]:
    """``{variable path: its key in stored}`` (None where there is none).

    A path not stored matches the one stored path that ends with it, or that it ends with, at
    a ``/``: Keras names a variable by the name scope it was built in, and a wrapper's inner
    layers rebuilt from a ``.keras`` file are built outside their wrapper's scope
    (``residual/sequential/dense/kernel`` comes back as ``dense/kernel``).
    """
    keys: dict[str, Optional[str]] = {}
    taken = set(paths) & set(stored)
    for path in paths:
        if path in stored:
            keys[path] = path
            continue
        candidates = [
            key
            for key in stored
            if key not in taken and (key.endswith(f"/{path}") or path.endswith(f"/{key}"))
        ]
        keys[path] = candidates[0] if len(candidates) == 1 else None
        if keys[path] is not None:
            taken.add(candidates[0])
    return keys


def _table_source(
    parameters: Union[ParameterTable, keras.Model, None],
    multipliers: Optional[Mapping[str, float]],
) -> Union[ParameterTable, Callable[[], ParameterTable], None]:
    """The table, or a function making it from a model (built by the time it is called)."""
    if parameters is not None and multipliers is not None:
        raise ValueError("pass parameters= or learning_rate_multipliers=, not both")
    if multipliers is not None:
        return None
    if isinstance(parameters, ParameterTable):
        return parameters
    if isinstance(parameters, keras.layers.Layer):
        # A function, not the model: an optimiser attribute holding the model would make it a
        # checkpoint dependency of its own optimiser. A model from ``unit_scale`` knows which
        # layers sit in which residual branch (its graph adds are not ``branch`` wrappers).
        report = getattr(parameters, "scmm_report", None)
        branches = report.branches() if report is not None else None
        return functools.partial(parameter_table, parameters, branches=branches)
    if parameters is None:
        raise ValueError(
            "uu.AdamW needs parameters=: the keras.Model built from scmm.uu layers, or"
            " scmm.uu.parameter_table(model)"
        )
    raise ValueError(
        f"parameters must be a keras.Model or a ParameterTable, got {type(parameters).__name__}"
    )


def _peak_learning_rate(
    learning_rate: Any, peak: Optional[float], independent_weight_decay: bool
) -> Optional[float]:
    """The learning rate at which the independent decay per step is ``weight_decay``."""
    if peak is None:
        if isinstance(learning_rate, (int, float)):
            peak = float(learning_rate)
        else:
            for attribute in ("warmup_target", "initial_learning_rate"):
                if getattr(learning_rate, attribute, None) is not None:
                    peak = float(getattr(learning_rate, attribute))
                    break
    if peak is None:
        if independent_weight_decay:
            raise ValueError(
                f"independent weight decay needs peak_learning_rate= for a learning rate of"
                f" type {type(learning_rate).__name__} (the rate whose decay per step is"
                " weight_decay)"
            )
        return None
    if math.isnan(peak) or peak <= 0:
        raise ValueError(f"peak_learning_rate must be > 0, got {peak}")
    return float(peak)
