"""Model FLOPs per token and the machine's measured matmul peak, for ``./dev bench``'s MFU.

Model FLOPs per trained token (the PaLM convention, arXiv:2204.02311 appendix B):

    6 N  +  18 L s n a      (attention models; the second term is 0 otherwise)

N counts the parameters that multiply every token's activations in a matmul: the parameter
table's "weight" and "readout" roles (QKV, attention output, FFN up/down, conv taps, the
RNN's input and recurrent kernels, the head). Each costs 2 FLOPs (multiply and add) per token
forward and 4 backward (input and weight gradients). Not counted: embedding lookups (a
gather), biases, norms, nonlinearities, softmax, optimiser updates, and the relative-position
key projection (``attention/positional``: computed once per step for all distances, not per
token, ~0.1% of the total here).

The attention term: per layer and token, three (s x a) products per head in the forward
pass, each 2 s a FLOPs -- content scores q k^T, relative-position scores q p^T and the
mixing w v -- and twice that backward: 3 x 3 x 2 s n a, for L layers, s the sequence length,
n heads of size a. It counts every key of the sequence (PaLM's convention), not the causal
half; the chunked attention (``scmm.ops.kernels``) computes 62.5% of it with 4 chunks.

MFU = model FLOPs per token x tokens/s / peak, where the peak is what one large float32
XLA matmul achieves on this machine (``measure_matmul_peak``), not a datasheet number.
"""

import math
import time
from typing import Any

import tensorflow as tf

MATMUL_ROLES = ("weight", "readout")
PER_STEP_PATHS = ("attention/positional",)  # matmul weights applied once per step, not token


def matmul_parameters(model: Any) -> int:
    """N: parameters applied to every token in a matmul (``model.parameters``' table)."""
    return sum(
        math.prod(p.shape)
        for p in model.parameters
        if p.role in MATMUL_ROLES and not p.path.endswith(PER_STEP_PATHS)
    )


def attention_flops_per_token(settings: Any, length: int) -> int:
    """18 L s n a for an attention model (``ModelSettings``), else 0 (see module docstring)."""
    sequence = settings.sequence
    if not hasattr(sequence, "heads"):
        return 0
    return 18 * settings.depth * length * sequence.heads * sequence.head_size


def model_flops_per_token(model: Any, length: int) -> int:
    """Training FLOPs per token: 6 N + the attention term."""
    return 6 * matmul_parameters(model) + attention_flops_per_token(model.settings, length)


def measure_matmul_peak(size: int = 1024, repeats: int = 8, calls: int = 5) -> float:
    """FLOP/s of an XLA-compiled float32 (size x size) @ (size x size) matmul, best call.

    Each call runs ``repeats`` dependent matmuls (so XLA keeps them all); the best of
    ``calls`` timed calls is taken, as other processes on a shared machine only slow it.
    """
    a = tf.random.stateless_normal([size, size], seed=[0, 1]) / math.sqrt(size)

    @tf.function(jit_compile=True)
    def chain(x: tf.Tensor) -> tf.Tensor:
        for _ in range(repeats):
            x = tf.matmul(x, a)
        return x

    chain(a).numpy()  # compile
    best = math.inf
    for _ in range(calls):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * repeats / best
