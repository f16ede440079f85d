"""A nanoGPT-style GPT in plain Keras (core layers only), for the FP8 demo and the tests.

Token and position embeddings, ``depth`` pre-norm blocks of causal ``MultiHeadAttention`` and a
GELU MLP, a final LayerNorm and a Dense readout. nanoGPT's init: every kernel and table
N(0, 0.02), the two residual output projections N(0, 0.02 / sqrt(2 depth)), biases zero.
Position ids come from the token ids inside the graph (``cumsum(ones) - 1``), so the model
takes one input and every weight is a Keras core layer's.
"""

import math

import keras
from keras import ops


def build_gpt(
    vocab: int,
    sequence: int,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    batch: int | None = None,
    seed: int = 0,
) -> keras.Model:
    """tokens (batch, sequence) int32 -> logits (batch, sequence, vocab)."""
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    # A fresh initialiser per layer, its seed drawn from the global generator seeded once
    # here: a Keras initialiser returns the same values at every call, so one shared object
    # gave every block the same kernels at init (the first demo results had that).
    keras.utils.set_random_seed(seed)

    def init() -> keras.initializers.Initializer:
        return keras.initializers.RandomNormal(stddev=0.02)

    def projection_init() -> keras.initializers.Initializer:
        return keras.initializers.RandomNormal(stddev=0.02 / math.sqrt(2 * depth))

    tokens = keras.Input(shape=(sequence,), batch_size=batch, dtype="int32", name="tokens")
    positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1  # (batch, sequence)
    x = keras.layers.Embedding(vocab, width, embeddings_initializer=init(), name="wte")(tokens)
    x = x + keras.layers.Embedding(sequence, width, embeddings_initializer=init(), name="wpe")(
        positions
    )  # (batch, sequence, width)
    for block in range(depth):
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{block}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            heads,
            width // heads,
            kernel_initializer=init(),
            name=f"block{block}_attn",
        )(h, h, use_causal_mask=True)
        x = x + h
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{block}_ln2")(x)
        h = keras.layers.Dense(
            4 * width, activation="gelu", kernel_initializer=init(), name=f"block{block}_fc"
        )(h)
        h = keras.layers.Dense(
            width, kernel_initializer=projection_init(), name=f"block{block}_proj"
        )(h)
        x = x + h
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="ln_f")(x)
    logits = keras.layers.Dense(vocab, kernel_initializer=init(), name="lm_head")(x)
    return keras.Model(tokens, logits, name="nanogpt")
