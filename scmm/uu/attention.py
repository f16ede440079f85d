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

Measured at init (d = 256, 4 heads, 128 causal positions, N(0, 1) inputs): output 1.06, query
input gradient 1.00, key/value input gradient 1.39 (it feeds k and v: sqrt 2). The output
exceeds 1 by O(d^-1/2) (1.26 at d = 64): k_s and v_s are projections of the same x_s, so for
fixed weights they correlate and the attended values share a component that the softmax
average does not shrink (the per-query rule is exact for iid values: ``U.dot_product_attention``).
The value bias's gradient is ~rms(alpha) (3.6 at 64 causal positions): a bias on every value
is such a shared component.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional.attention import attention_with_probabilities
from ..parameters import ParameterInfo
from .base import PACKAGE, PrecisionLike, UnitScaled
from .einsum_dense import EinsumDense, unit_normal

_DEFAULT_AXES = (None, 1, (1,), [1])
_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiHeadAttention(UnitScaled, keras.layers.MultiHeadAttention):
    """Unit-scaled ``keras.layers.MultiHeadAttention`` (see the module docstring).

    Extra arguments: ``scheme``, ``constraint`` (for the four projections), ``mult`` (the
    temperature multiplier) and ``precision``. Refused with a ValueError: ``dropout > 0``,
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
        use_gate: bool = False,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        mult: float = 1.0,
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
            use_gate=False,
            **kwargs,
        )
        self.init_unit_scaling(scheme, constraint, precision)
        self.mult = float(mult)

    # Keras passes shapes by the names in build's signature, so it must spell them out.
    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if shape is not None and len(shape) != 3:
                raise ValueError(
                    f"uu.MultiHeadAttention takes (batch, seq, features) inputs; {name} has"
                    f" shape {tuple(shape)}"
                )
        super().build(query_shape, value_shape, key_shape)
        for dense in (self._query_dense, self._key_dense, self._value_dense, self._output_dense):
            EinsumDense.adopt(dense, self.scheme, self._explicit_constraint, self.precision)

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
        return {**super().get_config(), **self.unit_config(), "mult": self.mult}
