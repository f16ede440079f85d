"""``scmm.uu.Embedding``: ``keras.layers.Embedding`` with a unit table and unit gradients.

The table starts at N(0, 1) (already unit: the forward needs no scale); its gradient is scaled
by sqrt(vocab / number of ids) (``scmm.U.embedding``), which makes the gradient's RMS over the
table 1 whatever the id distribution, and stays an ``IndexedSlices``. ``mask_zero`` works as in
Keras. A lookup has no non-cut edge, so the layer takes no ``constraint``; ``precision`` is
accepted for uniformity (a gather rounds nothing). Refused: LoRA and Keras's quantization.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional.linear import embedding
from ..parameters import ParameterInfo
from .base import PACKAGE, PrecisionLike, UnitScaled
from .dense import refuse_keras_quantization
from .einsum_dense import unit_normal


@keras.saving.register_keras_serializable(package=PACKAGE)
class Embedding(UnitScaled, keras.layers.Embedding):
    """Unit-scaled ``keras.layers.Embedding`` (same arguments, plus ``scheme``, ``precision``)."""

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: Any = None,
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        weights: Any = None,
        lora_rank: Optional[int] = None,
        lora_alpha: Optional[float] = None,
        quantization_config: Any = None,
        *,
        scheme: str = "unit",
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        del lora_alpha  # (LoRA is refused below)
        if lora_rank:
            raise ValueError(f"uu.Embedding does not support LoRA, got lora_rank={lora_rank}")
        if quantization_config is not None:
            raise ValueError("uu.Embedding does not support Keras quantization")
        super().__init__(
            input_dim,
            output_dim,
            embeddings_initializer=(
                unit_normal() if embeddings_initializer is None else embeddings_initializer
            ),
            embeddings_regularizer=embeddings_regularizer,
            embeddings_constraint=embeddings_constraint,
            mask_zero=mask_zero,
            weights=weights,
            **kwargs,
        )
        refuse_keras_quantization(self, "uu.Embedding")
        self.init_unit_scaling(scheme, None, precision)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        out = embedding(inputs, self.embeddings)  # (..., output_dim), the table's dtype
        return tf.cast(out, self.compute_dtype)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        return {"embeddings": ParameterInfo("embedding")}

    def quantize(self, mode: Any = None, type_check: bool = True, config: Any = None) -> None:
        del type_check, config
        raise ValueError(f"uu.Embedding cannot be quantized with Keras (mode={mode!r})")

    def enable_lora(self, rank: int, *args: Any, **kwargs: Any) -> None:
        del args, kwargs
        raise ValueError(f"uu.Embedding does not support LoRA (rank {rank})")

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), **self.unit_config()}
        del config["constraint"]  # a lookup has no non-cut edge to constrain
        return config
