"""scmm: unit scaling for TensorFlow/Keras character language models.

Subpackages:
  datasets     character vocabularies, corpora and batching
  layers       baseline Keras layers (embedding, attention, conv, RNN, FFN, residual, norm)
  models       the character LM built from one settings dataclass
  training     optimisers, loss, compiled multi-step training and evaluation
  pedal        execution adapter: device selection, XLA, streaming batches
  experiments  settings tree, presets, CLI, loggers, checkpoints
"""

__version__ = "0.1.0"
