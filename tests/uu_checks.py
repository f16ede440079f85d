"""Generic checks every ``scmm.uu`` layer goes through (in the spirit of keras-hub's layer test).

- ``scale_stats``: std of the output, of each float input's gradient and of each trainable
  weight's gradient, for an upstream gradient drawn N(0, 1) (the unit-scaling claim is that
  each is ~1, or what the op's rule predicts).
- ``check_config_round_trip``: ``from_config(get_config())`` rebuilds the same config, and
  Keras's own (de)serialisation finds the registered class.
- ``check_keras_file_round_trip``: a Functional model holding the layer saved to ``.keras`` and
  loaded back gives the same config and bit-identical outputs.
- ``check_fit_step``: ``compile(jit_compile=True).fit`` runs one step and changes the weights,
  in float32 and in ``mixed_bfloat16``.
"""

import pathlib
from typing import Any, Callable, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

Inputs = Union[np.ndarray, Sequence[np.ndarray]]


def _as_list(inputs: Inputs) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return list(inputs)


def _call(layer: keras.layers.Layer, tensors: list[tf.Tensor], call_kwargs: dict) -> tf.Tensor:
    return layer(tensors[0] if len(tensors) == 1 else tensors, **call_kwargs)


def _call_split(layer: keras.layers.Layer, tensors: list[tf.Tensor], call_kwargs: dict) -> Any:
    # Layers taking several tensors positionally (MultiHeadAttention) vs a list (Add).
    if call_kwargs.pop("positional", False):
        return layer(*tensors, **call_kwargs)
    return _call(layer, tensors, call_kwargs)


def scale_stats(
    layer: keras.layers.Layer, inputs: Inputs, seed: int = 0, **call_kwargs: Any
) -> dict[str, float]:
    """``{"output": std, "grad_input_<i>": std, "grad_<weight name>": std}`` at N(0,1) upstream."""
    tensors = [tf.constant(x) for x in _as_list(inputs)]
    float_inputs = [t for t in tensors if t.dtype.is_floating]
    with tf.GradientTape() as tape:
        tape.watch(float_inputs)
        out = _call_split(layer, tensors, dict(call_kwargs))
        upstream = tf.random.stateless_normal(tf.shape(out), seed=[seed, 1], dtype=out.dtype)
        objective = tf.reduce_sum(out * tf.stop_gradient(upstream))
    weights = layer.trainable_weights
    grads = tape.gradient(objective, [*float_inputs, *weights])
    stats = {"output": float(np.std(out.numpy()))}
    for i, grad in enumerate(grads[: len(float_inputs)]):
        stats[f"grad_input_{i}"] = float(np.std(_dense(grad)))
    for weight, grad in zip(weights, grads[len(float_inputs) :]):
        stats[f"grad_{weight.name}"] = float(np.std(_dense(grad)))
    return stats


def _dense(grad: Any) -> np.ndarray:
    return np.asarray(tf.convert_to_tensor(grad))


def check_config_round_trip(layer: keras.layers.Layer) -> keras.layers.Layer:
    """Rebuild ``layer`` from its config, directly and through Keras's registry."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is type(layer)
    assert revived.get_config() == config
    return clone


def functional_model(
    make_layer: Callable[[], keras.layers.Layer], inputs: Inputs, **call_kwargs: Any
) -> keras.Model:
    """A Functional model of one layer over inputs shaped (and typed) like ``inputs``."""
    arrays = _as_list(inputs)
    symbolic = [
        keras.Input(shape=a.shape[1:], batch_size=a.shape[0], dtype=str(a.dtype)) for a in arrays
    ]
    out = _call_split(make_layer(), symbolic, dict(call_kwargs))
    return keras.Model(symbolic if len(symbolic) > 1 else symbolic[0], out)


def check_keras_file_round_trip(
    make_layer: Callable[[], keras.layers.Layer],
    inputs: Inputs,
    directory: pathlib.Path,
    **call_kwargs: Any,
) -> None:
    """Save a one-layer model to ``.keras``, load it, compare config and outputs exactly."""
    model = functional_model(make_layer, inputs, **call_kwargs)
    arrays = _as_list(inputs)
    feed = arrays if len(arrays) > 1 else arrays[0]
    expected = np.asarray(model(feed))
    path = directory / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    original_layer, loaded_layer = model.layers[-1], loaded.layers[-1]
    assert type(loaded_layer) is type(original_layer)
    assert loaded_layer.get_config() == original_layer.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(feed)), expected)


def check_fit_step(
    make_layer: Callable[[], keras.layers.Layer],
    inputs: Inputs,
    dtype_policy: str = "float32",
    **call_kwargs: Any,
) -> None:
    """One ``fit`` step under ``jit_compile=True`` with ``dtype_policy``; weights (if any) move."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        model = functional_model(make_layer, inputs, **call_kwargs)
        arrays = _as_list(inputs)
        feed = arrays if len(arrays) > 1 else arrays[0]
        out_shape = model.output.shape
        target = np.random.default_rng(1).normal(size=out_shape).astype("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        before = [np.array(w) for w in model.trainable_weights]
        history = model.fit(feed, target, batch_size=out_shape[0], epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        after = [np.array(w) for w in model.trainable_weights]
        if before:  # parameter-free layers (ReLU, Add) only have to run
            assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    finally:
        keras.config.set_dtype_policy(previous)
