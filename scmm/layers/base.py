"""The base of every scmm layer: a seed, an op set, and parameters declared with their facts.

A layer is written once. Its arithmetic comes from the op set named by ``ops`` ("plain" for
regular models, "unit" for unit-scaled ones, a dict for u-mup's with its multipliers;
``scmm.ops``), which also sets the initial std of its weights. Each variable is created by
``add_parameter`` with its role and fan-in (what the per-parameter table in
``scmm.parameters`` records), and its random initialiser is seeded by ``seed`` and the
variable's index, so weights never depend on creation order.
"""

from typing import Any, Literal, Optional

import keras

from ..ops import OpsSpec, get_ops
from ..ops.base import OpSet
from ..parameters import ParameterInfo, Role

Init = Literal["normal", "unit_normal", "zeros", "ones"]


def seeded_normal(seed: int, stddev: float) -> keras.initializers.Initializer:
    """Normal initialiser with its own seed."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=stddev, seed=seed)


class ScaledLayer(keras.layers.Layer):
    """A Keras layer whose ops come from an op set and whose parameters carry their facts."""

    def __init__(self, seed: int = 0, ops: OpsSpec = "plain", **kwargs: Any):
        super().__init__(**kwargs)
        self.seed = seed
        # The spec (a name, or a dict of name and options such as u-mup's multipliers): what
        # get_config stores and what the layer hands to the layers it builds.
        self.ops_name: OpsSpec = ops if isinstance(ops, str) else dict(ops)
        self.ops: OpSet = get_ops(ops)
        # id(variable) -> facts; ids are stable while the layer holds its variables.
        self.parameter_facts: dict[int, ParameterInfo] = {}
        # attribute name of a kernel -> its density, set by sparse training (scmm.sparsity).
        self.densities: dict[str, float] = {}

    def read_kernel(self, name: str) -> Any:
        """The variable ``name`` as its op reads it (``OpSet.sparse_kernel`` when sparse)."""
        variable = getattr(self, name)
        density = self.densities.get(name, 1.0)
        return variable if density == 1.0 else self.ops.sparse_kernel(variable, density)

    def weight_seed(self, index: int) -> int:
        """The seed of this layer's ``index``-th random weight."""
        return int(self.seed) * 1009 + index

    def add_parameter(  # pylint: disable=too-many-arguments
        self,
        name: str,
        shape: tuple[int, ...],
        role: Role,
        *,
        fan_in: Optional[int] = None,
        init: Init = "normal",
        seed_index: int = 0,
    ) -> keras.Variable:
        """Create a variable and record its role and fan-in.

        init: "normal" draws N(0, ops.init_std(fan_in)^2) (N(0, 1/fan_in) plain, N(0, 1) unit);
        "unit_normal" N(0, 1) in every op set (embedding rows); "zeros" / "ones".
        """
        initializer: Any
        if init == "normal":
            if fan_in is None:
                raise ValueError(f"parameter {name!r}: init 'normal' needs a fan_in")
            initializer = seeded_normal(self.weight_seed(seed_index), self.ops.init_std(fan_in))
        elif init == "unit_normal":
            initializer = seeded_normal(self.weight_seed(seed_index), 1.0)
        elif init in ("zeros", "ones"):
            initializer = init
        else:
            raise ValueError(f"parameter {name!r}: unknown init {init!r}")
        variable = self.add_weight(name=name, shape=shape, initializer=initializer)
        self.parameter_facts[id(variable)] = ParameterInfo(role, fan_in)
        return variable

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed, "ops": self.ops_name}


def parameter_facts(root: keras.layers.Layer) -> dict[int, ParameterInfo]:
    """Facts of every parameter created under ``root`` (by ``id`` of the variable)."""
    facts: dict[int, ParameterInfo] = {}
    # Keras' own walk over nested layers (each once); it has no public spelling.
    walk = root._flatten_layers  # pylint: disable=protected-access
    for layer in walk(include_self=True, recursive=True):
        facts.update(getattr(layer, "parameter_facts", {}))
    return facts
