"""The Keras layer contract, checked generically over every layer class in ``scmm.layers``.

For each class, in both op sets: ``get_config`` holds every constructor argument and
round-trips through ``from_config`` and Keras' (de)serialisation (the class is registered under
the package "scmm"), the rebuilt layer computes the same outputs from the same weights, and the
class docstring names every weight the layer creates. A new layer class must be added to
``EXAMPLES`` (a test fails until it is).
"""

import inspect
from typing import Any, Callable, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

from scmm import layers
from scmm.layers import (
    FFN,
    Attention,
    CausalConv,
    Embedding,
    LayerNorm,
    Projection,
    RecurrentHighway,
    Residual,
    ScaledLayer,
    Shift,
)

# A small instance of each class (for op set ``ops``) and an input for it.
EXAMPLES: dict[Any, Callable[[str], tuple[Any, Optional[np.ndarray]]]] = {
    Embedding: lambda ops: (Embedding(16, 8, seed=3, ops=ops), np.arange(12).reshape(2, 6) % 16),
    Shift: lambda ops: (Shift(8, seed=3, ops=ops), None),
    LayerNorm: lambda ops: (LayerNorm(8, epsilon=1e-4, ops=ops), None),
    Projection: lambda ops: (Projection(8, 4, use_bias=False, seed=2, ops=ops), None),
    FFN: lambda ops: (FFN(8, 2.0, seed=1, ops=ops), None),
    CausalConv: lambda ops: (CausalConv(8, 3, 2, seed=1, ops=ops), None),
    RecurrentHighway: lambda ops: (RecurrentHighway(8, rebias=0.5, seed=4, ops=ops), None),
    Attention: lambda ops: (Attention(8, 2, 4, 4, 16.0, query_chunk=4, seed=5, ops=ops), None),
    Residual: lambda ops: (
        Residual(Projection(8, 8, seed=6, ops=ops), 8, norm="post", tau=0.25, ops=ops),
        None,
    ),
}


def _input(given: Any) -> tf.Tensor:
    if given is not None:
        return tf.constant(given, tf.int32)
    return tf.constant(np.random.default_rng(0).normal(size=(2, 6, 8)), tf.float32)


def test_every_layer_class_is_covered() -> None:
    classes = {
        obj
        for obj in vars(layers).values()
        if isinstance(obj, type) and issubclass(obj, ScaledLayer) and obj is not ScaledLayer
    }
    assert classes == set(EXAMPLES)


@pytest.mark.parametrize("ops", ["plain", "unit"])
@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_config_round_trips_the_constructor(cls: Any, ops: str) -> None:
    layer, _ = EXAMPLES[cls](ops)
    config = layer.get_config()
    arguments = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert set(arguments) | {"seed", "ops"} <= set(config), (arguments, sorted(config))
    assert config["ops"] == ops
    rebuilt = cls.from_config(config)
    assert rebuilt.get_config() == config
    assert keras.saving.get_registered_name(cls) == f"scmm>{cls.__name__}"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert again.__class__ is cls and again.get_config() == config


@pytest.mark.parametrize("ops", ["plain", "unit"])
@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_rebuilt_layer_computes_the_same(cls: Any, ops: str) -> None:
    layer, given = EXAMPLES[cls](ops)
    x = _input(given)
    layer.build(None)
    expected = layer(x)
    rebuilt = cls.from_config(layer.get_config())
    rebuilt.build(None)
    # The same seeds give the same initial weights; the weights also copy across.
    for a, b in zip(layer.weights, rebuilt.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
    rebuilt.set_weights([np.asarray(w) * 1.5 for w in layer.get_weights()])
    layer.set_weights(rebuilt.get_weights())
    np.testing.assert_array_equal(rebuilt(x).numpy(), layer(x).numpy())
    assert expected.shape == layer(x).shape


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_docstrings_name_the_weights(cls: Any) -> None:
    layer, _ = EXAMPLES[cls]("plain")
    layer.build(None)
    doc = inspect.getdoc(cls) or ""
    body = {id(v) for v in layer.body.weights} if isinstance(layer, Residual) else set()
    own = [v for v in layer.weights if id(v) not in body]  # the docstring names the body's
    assert own
    for variable in own:
        # The path below the layer, e.g. "up/kernel" for FFN, "norm/gamma" for Residual.
        parts = variable.path.split("/")
        name = "/".join(parts[1:] if parts[0] == layer.name and len(parts) > 1 else parts)
        assert f"``{name}``" in doc, f"{cls.__name__} docstring does not name weight {name!r}"


def test_layers_train_in_a_keras_model() -> None:
    """A functional Keras model of scmm layers compiles and fits with Keras' own loop."""
    keras.utils.set_random_seed(0)  # other tests enable op determinism, which needs a seed
    tokens = keras.Input((6,), batch_size=4, dtype="int32")
    hidden = Embedding(16, 8, ops="unit")(tokens)
    hidden = Residual(CausalConv(8, 3, 2, ops="unit"), 8, tau=0.5, ops="unit")(hidden)
    logits = Projection(8, 16, ops="unit")(hidden)
    model = keras.Model(tokens, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = np.random.default_rng(0).integers(0, 16, (8, 6))
    history = model.fit(data, data, batch_size=4, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
