"""Every ``scmm.uu`` layer takes its Keras base's arguments in Keras's order, so code written
for ``keras.layers`` (``Conv1D(8, 3, 2, "same")``) means the same with ``uu``.

The unit-scaling arguments (``scheme``, ``constraint``, ``precision``, ...) are keyword-only:
a positional call can never reach them. Defaults are Keras's, except the initialisers of
kernels and tables, whose default is the unit-scale N(0, 1) (``None`` in the signature).
"""

import inspect
from typing import Any

import keras
import numpy as np
import pytest

from scmm import uu

DROP_IN = [
    cls
    for cls in (getattr(uu, name) for name in uu.__all__)
    if isinstance(cls, type)
    and issubclass(cls, keras.layers.Layer)
    and hasattr(keras.layers, cls.__name__)
]
UNIT_INITIALIZERS = ("kernel_initializer", "embeddings_initializer")


def _positional(cls: Any) -> list[inspect.Parameter]:
    return [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]


def test_every_drop_in_layer_is_checked() -> None:
    names = {cls.__name__ for cls in DROP_IN}
    assert {"Dense", "EinsumDense", "Embedding", "MultiHeadAttention", "Conv1D"} <= names
    assert len(names) >= 12


@pytest.mark.parametrize("cls", DROP_IN, ids=lambda c: c.__name__)
def test_positional_arguments_are_kerass_in_kerass_order(cls: Any) -> None:
    ours = _positional(cls)
    theirs = _positional(getattr(keras.layers, cls.__name__))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for mine, keras_parameter in zip(ours, theirs):
        if mine.name not in UNIT_INITIALIZERS:
            assert mine.default == keras_parameter.default, mine.name


@pytest.mark.parametrize("cls", DROP_IN, ids=lambda c: c.__name__)
def test_unit_scaling_arguments_are_keyword_only(cls: Any) -> None:
    keras_names = set(inspect.signature(getattr(keras.layers, cls.__name__).__init__).parameters)
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name in ("scheme", "constraint", "precision", "role", "mult", "gradient"):
            assert parameter.name not in keras_names
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter.name


def test_positional_calls_mean_what_they_mean_in_keras() -> None:
    conv = uu.Conv1D(8, 3, 2, "same", None, 1, 2, "relu", False)
    assert (conv.strides, conv.padding, conv.groups) == ((2,), "same", 2)
    assert not conv.use_bias and conv.activation is keras.activations.relu
    dilated = uu.Conv1D(8, 3, 1, "causal", None, 2)
    assert (dilated.padding, dilated.dilation_rate) == ("causal", (2,))
    dense = uu.Dense(8, "gelu", False)
    assert dense.activation is keras.activations.gelu and not dense.use_bias
    embedding = uu.Embedding(10, 4, None, None, None, True)
    assert embedding.mask_zero
    attention = uu.MultiHeadAttention(2, 4, 6, 0.0, False)
    assert (attention._value_dim, attention._use_bias) == (6, False)


def test_keras_regularizers_and_constraints_reach_the_layer() -> None:
    dense = uu.Dense(4, kernel_regularizer="l2", kernel_constraint="non_neg")
    dense.build((None, 3))
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(dense.kernel.constraint, keras.constraints.NonNeg)
    conv = uu.Conv1D(4, 3, bias_regularizer="l1")
    assert isinstance(conv.bias_regularizer, keras.regularizers.L1)
    # A config carrying them round-trips.
    again = uu.Dense.from_config(dense.get_config())
    assert isinstance(again.kernel_regularizer, keras.regularizers.L2)
    model = keras.Sequential([keras.Input((3,)), dense])
    model(np.ones((2, 3), "float32"))
    assert len(model.losses) == 1  # the L2 penalty of the kernel
