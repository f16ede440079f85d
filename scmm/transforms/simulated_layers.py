"""Keras's matmul layers with simulated number formats (what ``simulate_fp8`` swaps in).

Each class is its Keras base with the matmul operands rounded (``scmm.precision.operand``:
activations and weights to the forward format) and the gradient arriving at the product rounded
(``scmm.precision.output``: the backward format), inside the layer's own ``precision`` scope.
Everything else is Keras's arithmetic, so with float32 formats the output is Keras's exactly.
Unit-scaled models get the same rounding from the ``scmm.uu`` layers' ``precision`` argument.
"""

from typing import Any, Optional

import keras
import tensorflow as tf
from keras import ops

from .. import precision as hooks
from ..precision_settings import PrecisionSettings
from ..uu.attention import adopt_projections
from ..uu.base import PrecisionLike, UnitScaled

PACKAGE = "scmm.simulated"


def _rounded_product(equation: Optional[str], x: tf.Tensor, w: tf.Tensor, role: str) -> tf.Tensor:
    # A Keras variable reads as a tensor (autocast to the compute dtype inside a layer call).
    w = ops.cast(ops.convert_to_tensor(w), x.dtype)
    x, w = hooks.operand(x, "activation"), hooks.operand(w, role)
    product = ops.matmul(x, w) if equation is None else ops.einsum(equation, x, w)
    return hooks.output(product)


class _Simulated(UnitScaled):
    """The ``precision`` argument of a simulated layer (``UnitScaled`` minus the scaling)."""

    simulates = ""
    """The Keras class this one simulates (``unit_scale`` maps it to that class's twin)."""

    def init_precision(self, precision: PrecisionLike) -> None:
        """Store the formats (validated)."""
        self.init_unit_scaling("unit", None, precision)

    def bias_and_activation(self, y: tf.Tensor) -> tf.Tensor:
        """What a Keras Dense / EinsumDense does after its product."""
        bias = getattr(self, "bias", None)
        if bias is not None:
            y = ops.add(y, bias)
        activation = getattr(self, "activation", None)
        return activation(y) if activation is not None else y

    def precision_config(self) -> dict[str, Any]:
        """The formats, for ``get_config``."""
        return {"precision": self.unit_config()["precision"]}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimulatedDense(_Simulated, keras.layers.Dense):
    """``keras.layers.Dense`` with simulated formats on its matmul."""

    simulates = "Dense"

    def __init__(self, *args: Any, precision: PrecisionLike = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_precision(precision)

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        del training
        with self.precision_scope():
            y = _rounded_product(None, inputs, self.kernel, "weight")  # (..., units)
        return self.bias_and_activation(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.precision_config()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimulatedEinsumDense(_Simulated, keras.layers.EinsumDense):
    """``keras.layers.EinsumDense`` with simulated formats on its einsum."""

    simulates = "EinsumDense"

    def __init__(self, *args: Any, precision: PrecisionLike = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_precision(precision)

    @classmethod
    def adopt(
        cls, layer: keras.layers.EinsumDense, precision: Optional[PrecisionSettings]
    ) -> "SimulatedEinsumDense":
        """Turn a built Keras ``EinsumDense`` (inside ``MultiHeadAttention``) into this class in
        place, with the (validated) formats ``precision``: same object, variables and paths."""
        layer.__class__ = cls
        # object.__setattr__: Keras's attribute tracker is locked on a built layer, and these
        # are plain settings (what init_precision stores), not state to track.
        object.__setattr__(layer, "precision", precision)
        object.__setattr__(layer, "_explicit_constraint", None)
        object.__setattr__(layer, "scheme", "unit")
        object.__setattr__(layer, "constraint", "gmean")
        return layer

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        del training
        with self.precision_scope():
            y = _rounded_product(self.equation, inputs, self.kernel, "weight")
        return self.bias_and_activation(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.precision_config()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimulatedConv1D(_Simulated, keras.layers.Conv1D):
    """``keras.layers.Conv1D`` with simulated formats on its convolution."""

    simulates = "Conv1D"

    def __init__(self, *args: Any, precision: PrecisionLike = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_precision(precision)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        # Keras's Conv1D.call with the product's operands and output gradient rounded (it calls
        # ops.conv itself, not convolution_op).
        if self.data_format != "channels_last":
            raise ValueError(f"SimulatedConv1D supports channels_last, got {self.data_format!r}")
        padding = self.padding
        if padding == "causal":
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        with self.precision_scope():
            kernel = ops.cast(ops.convert_to_tensor(self.kernel), inputs.dtype)
            x, w = hooks.operand(inputs, "activation"), hooks.operand(kernel, "weight")
            y = ops.conv(
                x,
                w,
                strides=list(self.strides),
                padding=padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            y = hooks.output(y)  # (batch, steps, filters)
        if self.use_bias:
            y = ops.add(y, ops.reshape(self.bias, (1, 1, self.filters)))
        return self.activation(y) if self.activation is not None else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.precision_config()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimulatedMultiHeadAttention(_Simulated, keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with simulated formats on its four projections and
    both attention einsums (scores q.k and mixing probabilities.v, activation operands)."""

    simulates = "MultiHeadAttention"

    def __init__(self, *args: Any, precision: PrecisionLike = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_precision(precision)

    # Keras passes shapes by the names in build's signature, so it must spell them out.
    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        super().build(query_shape, value_shape, key_shape)
        adopt_projections(self, lambda dense: SimulatedEinsumDense.adopt(dense, self.precision))

    def _compute_attention(  # pylint: disable=too-many-arguments
        self,
        query: tf.Tensor,
        key: tf.Tensor,
        value: tf.Tensor,
        attention_mask: Any = None,
        training: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
    ) -> tuple[tf.Tensor, Any]:
        with self.precision_scope():
            simulating = hooks.current() is not None
        if not simulating:  # Keras's own (possibly fused) path, bit for bit
            return super()._compute_attention(
                query,
                key,
                value,
                attention_mask,
                training,
                return_attention_scores,
                use_causal_mask,
            )
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = (
                causal
                if attention_mask is None
                else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
            )
        query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        with self.precision_scope():
            scores = _rounded_product(self._dot_product_equation, key, query, "activation")
            scores = self._masked_softmax(scores, attention_mask)  # (B, N, T, S)
            if self._dropout > 0.0:
                scores = self._dropout_layer(scores, training=training)
            out = _rounded_product(self._combine_equation, scores, value, "activation")
        return out, (scores if return_attention_scores else None)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.precision_config()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimulatedOp(_Simulated, keras.layers.Layer):
    """A ``keras.ops.matmul`` / ``keras.ops.einsum`` node of a Functional graph with simulated
    formats: both operands rounded as activations, the gradient at the product rounded."""

    FUNCTIONS = ("matmul", "einsum")

    def __init__(
        self,
        function: str,
        options: Optional[dict[str, Any]] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if function not in self.FUNCTIONS:
            raise ValueError(f"SimulatedOp simulates {self.FUNCTIONS}, got {function!r}")
        self.function = function
        self.options = dict(options or {})
        self.init_precision(precision)

    def call(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        equation = self.options.get("subscripts") if self.function == "einsum" else None
        with self.precision_scope():
            return _rounded_product(equation, x, y, "activation")

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "function": self.function,
            "options": dict(self.options),
            **self.precision_config(),
        }


SIMULATED = {
    cls.simulates: cls
    for cls in (SimulatedDense, SimulatedEinsumDense, SimulatedConv1D, SimulatedMultiHeadAttention)
}
