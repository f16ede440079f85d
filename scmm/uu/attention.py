"""``scmm.uu.MultiHeadAttention``: ``keras.layers.MultiHeadAttention``, unit-scaled.

Keras builds its four projections (query, key, value, attention_output) as
``keras.layers.EinsumDense``; ``build`` lets it, then turns each into a ``scmm.uu.EinsumDense``
in place (``EinsumDense.adopt``: same objects, variables, order and weight paths, so Keras
checkpoints and the ``.keras`` format are unchanged). The attention itself is
``scmm.U.dot_product_attention`` on Keras's combined mask (query/value/key masks, the
``attention_mask`` argument, ``use_causal_mask`` and ``sliding_window``), so every query row
gets the output scale of its own number of attended keys.

Temperature: "unit" keeps Keras's 1/sqrt(key_dim) (times ``mult``); "umup" uses u-muP's
mult/key_dim. ``parameter_info`` keys are ``"<sub-layer property>.<weight>"``, e.g.
``"query_dense.kernel"`` (fan-in = the input features) or ``"output_dense.kernel"`` (fan-in
heads x value_dim).

The attention rule (``scmm.functional.attention``): output alpha(n_t)^1/2 per query row, q/k
gradients unit for iid inputs (``gradient="unit"``; ``"true"`` keeps the exact gradient).
Self- and cross-attention feed one tensor to two or three projections whose input gradients
add; ``call`` gives such a tensor 1/sqrt(uses) in the backward (``share_fan_out``), as a fused
QKV projection's fan-out rule would.

Measured at init (d = 256, 4 heads, 128 causal positions, N(0, 1) inputs; see the tests):
output 0.516 against the iid prediction 0.493 (k_s and v_s are projections of the same x_s, so
for fixed weights the attended values share a component the softmax average does not shrink),
query input gradient 1.07, key/value input gradient sqrt((1 + 0.49^2) / 2) ~ 0.8 (unit k
gradient, v's like the output).
"""

from typing import Any, Callable, Optional

import keras
import tensorflow as tf
from keras.src.backend import get_keras_mask, set_keras_mask

from ..functional.attention import GRADIENTS, attention_with_probabilities
from ..parameters import ParameterInfo
from ..uscale.scaling import scaling
from .base import PACKAGE, PrecisionLike, UnitScaled
from .einsum_dense import EinsumDense, unit_normal

_DEFAULT_AXES = (None, 1, (1,), [1])
_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")


def adopt_projections(
    layer: keras.layers.MultiHeadAttention, adopt: Callable[[keras.layers.EinsumDense], Any]
) -> None:
    """``adopt`` each of a built Keras ``MultiHeadAttention``'s four ``EinsumDense``
    projections (query, key, value, attention_output, in that order), e.g. turning it into a
    subclass in place: the same objects, variables and weight paths."""
    for name in _PROJECTIONS:
        adopt(getattr(layer, name))


def share_fan_out(*inputs: tf.Tensor) -> list[tf.Tensor]:
    """The inputs, each tensor that reaches k > 1 of them given the gradient factor k^-1/2.

    Self-attention feeds one tensor to the query, key and value projections, whose input
    gradients add: three unit gradients sum to sqrt(3). A fused (d, 3d) projection would scale
    its input gradient by 1/sqrt(3d) rather than 1/sqrt(d); this is the same correction for
    Keras's three separate projections. Sharing is seen by tensor identity (Keras passes the
    same tensor object for ``mha(x, x)``, in eager, Functional and compiled calls); tensors that
    are equal but distinct objects are treated as independent. Keras masks are kept.
    """
    uses: dict[int, int] = {}
    for tensor in inputs:
        uses[id(tensor)] = uses.get(id(tensor), 0) + 1
    shared: dict[int, tf.Tensor] = {}
    for tensor in inputs:
        if uses[id(tensor)] > 1 and id(tensor) not in shared:
            scaled = scaling(tensor, backward=uses[id(tensor)] ** -0.5)
            set_keras_mask(scaled, get_keras_mask(tensor))
            shared[id(tensor)] = scaled
    return [shared.get(id(tensor), tensor) for tensor in inputs]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiHeadAttention(UnitScaled, keras.layers.MultiHeadAttention):
    """Unit-scaled ``keras.layers.MultiHeadAttention`` (see the module docstring).

    Extra arguments: ``scheme``, ``constraint`` (for the four projections), ``mult`` (the
    temperature multiplier), ``gradient`` ("unit" or "true": the q/k gradient rule of
    ``U.dot_product_attention``) and ``precision``. Refused with a ValueError: ``dropout > 0``,
    ``use_gate``, ``flash_attention=True``, non-default ``attention_axes``, inputs other than
    (batch, seq, features).
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-locals,too-many-positional-arguments
        self,
        num_heads: int,
        key_dim: int,
        value_dim: Optional[int] = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        output_shape: Any = None,
        attention_axes: Any = None,
        sliding_window: Optional[int] = None,
        flash_attention: Optional[bool] = None,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        use_gate: bool = False,
        seed: Optional[int] = None,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        mult: float = 1.0,
        gradient: str = "unit",
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if dropout:
            raise ValueError(
                f"uu.MultiHeadAttention does not support dropout (got {dropout}); a unit-scaled"
                " attention dropout is not implemented"
            )
        if use_gate:
            raise ValueError("uu.MultiHeadAttention does not support use_gate=True")
        if flash_attention:
            raise ValueError("uu.MultiHeadAttention cannot use flash attention (it needs the mask)")
        if attention_axes not in _DEFAULT_AXES:
            raise ValueError(
                f"uu.MultiHeadAttention attends over the sequence axis only; got"
                f" attention_axes={attention_axes!r}"
            )
        if not (isinstance(mult, (int, float)) and mult > 0):
            raise ValueError(f"uu.MultiHeadAttention mult must be a number > 0, got {mult!r}")
        if gradient not in GRADIENTS:
            raise ValueError(
                f"uu.MultiHeadAttention gradient must be one of {GRADIENTS}, got {gradient!r}"
            )
        super().__init__(
            num_heads,
            key_dim,
            value_dim=value_dim,
            dropout=0.0,
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=attention_axes,
            sliding_window=sliding_window,
            flash_attention=False,
            kernel_initializer=unit_normal() if kernel_initializer is None else kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            use_gate=False,
            seed=seed,
            **kwargs,
        )
        self.init_unit_scaling(scheme, constraint, precision)
        self.mult = float(mult)
        self.gradient = gradient

    # Keras passes shapes by the names in build's signature, so it must spell them out.
    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if shape is not None and len(shape) != 3:
                raise ValueError(
                    f"uu.MultiHeadAttention takes (batch, seq, features) inputs; {name} has"
                    f" shape {tuple(shape)}"
                )
        super().build(query_shape, value_shape, key_shape)
        adopt_projections(
            self,
            lambda dense: EinsumDense.adopt(
                dense, self.scheme, self._explicit_constraint, self.precision
            ),
        )

    def call(  # pylint: disable=too-many-arguments,arguments-differ
        self,
        query: tf.Tensor,
        value: tf.Tensor,
        key: Optional[tf.Tensor] = None,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
        **kwargs: Any,
    ) -> Any:
        query, value, key = share_fan_out(query, value, value if key is None else key)
        return super().call(
            query,
            value,
            key,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            **kwargs,
        )

    def _temperature(self) -> float:
        """The logit scale (before ``mult``): Keras's 1/sqrt(key_dim), or u-muP's 1/key_dim."""
        return 1.0 / self._key_dim if self.scheme == "umup" else self._key_dim**-0.5

    def _compute_attention(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        query: tf.Tensor,
        key: tf.Tensor,
        value: tf.Tensor,
        attention_mask: Any = None,
        training: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
    ) -> tuple[tf.Tensor, Any]:
        del training  # no dropout
        # Keras's call folds the causal mask into attention_mask for subclasses that override
        # this method; is_causal here is only for a direct caller.
        mask = None if attention_mask is None else tf.cast(attention_mask, tf.bool)[:, None]
        with self.precision_scope():
            out, probabilities = attention_with_probabilities(
                query,  # (B, T, N, key_dim)
                key,  # (B, S, N, key_dim)
                value,  # (B, S, N, value_dim)
                mask=mask,  # (B, 1, T, S)
                scale=self._temperature(),
                is_causal=use_causal_mask,
                mult=self.mult,
                gradient=self.gradient,
            )
        return out, (probabilities if return_attention_scores else None)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        if not self.built:
            raise ValueError(f"{self.name}: parameter_info needs a built layer")
        info = {}
        for name in _PROJECTIONS:
            dense = getattr(self, name)
            for weight, row in dense.parameter_info().items():
                info[f"{name}.{weight}"] = row
        return info

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self.unit_config(),
            "mult": self.mult,
            "gradient": self.gradient,
        }
