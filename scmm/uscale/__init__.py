"""Unit scaling (Blake, Orr, Luschi, ICML 2023): functional ops with scaled forward/backward.

Every op is plain TF ops composed with one primitive, ``scaling(x, forward, backward)``. The
factors come from static shapes:

    ideal scales (unit inputs -> unit output; unit output grad -> unit input grads)
    -> ``constrain`` them where an input is on a non-cut edge (geometric mean by default)
    -> ``scaling(backward=...)`` on inputs -> the op -> ``scaling(forward=...)`` on the output.

Modules: ``scaling`` (primitive and constraint), ``ops`` (projection, matmul, bias, gain,
embedding, causal conv, layer norm, residual), ``nonlinear`` (relu/gelu/tanh/sigmoid,
softmax, cross-entropy), ``attention_ops`` and ``rnn_ops`` (the char-LM sequence mixers),
``calibration`` (per-parameter weight-gradient factors measured once at init). These are the
functional ops (like the PyTorch library's ``unit_scaling.functional``); ``scmm.ops.UnitOps``
is the op set the layers use, built from them.
"""

from .attention_ops import (
    LOGIT_VARIANCE,
    attention_scale,
    causal_attention,
    positional_keys,
    qkv_projection,
)
from .batch_split import batch_parts, batch_split, global_rows
from .calibration import calibrate_weight_gradients, weight_gradients
from .nonlinear import (
    GELU_SCALES,
    RELU_SCALES,
    SIGMOID_SCALES,
    TANH_SCALES,
    gelu,
    gelu_scales,
    relu,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    tanh,
)
from .ops import (
    add_bias,
    causal_conv1d,
    embedding_lookup,
    layer_norm,
    matmul,
    multiply_gain,
    projection,
    readout,
    residual_add,
    residual_split,
)
from .rnn_ops import RHN_OUTPUT_SCALE, recurrent_highway, rhn_gate_scale, rhn_kernels
from .scaling import CONSTRAINTS, Constraint, constrain, scaling

__all__ = [
    "batch_parts",
    "batch_split",
    "global_rows",
    "CONSTRAINTS",
    "Constraint",
    "GELU_SCALES",
    "LOGIT_VARIANCE",
    "RELU_SCALES",
    "RHN_OUTPUT_SCALE",
    "SIGMOID_SCALES",
    "TANH_SCALES",
    "add_bias",
    "attention_scale",
    "calibrate_weight_gradients",
    "causal_attention",
    "causal_conv1d",
    "constrain",
    "embedding_lookup",
    "gelu",
    "gelu_scales",
    "layer_norm",
    "matmul",
    "multiply_gain",
    "positional_keys",
    "projection",
    "qkv_projection",
    "readout",
    "recurrent_highway",
    "relu",
    "residual_add",
    "residual_split",
    "rhn_gate_scale",
    "rhn_kernels",
    "scaling",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
    "weight_gradients",
]
