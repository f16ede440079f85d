"""Text from a trained run: ``python -m scmm.sample RUN_DIR --prompt TEXT``.

``read_run`` (settings, vocabulary, checkpoint path; no TensorFlow), ``Decoding`` and
``choose`` (temperature, top-k and seeded draws on host logits), and ``Generator`` (the run's
model with its checkpoint weights; imported from ``scmm.sample.generator``, which loads
TensorFlow). Sampling sits above experiments: it reads their run folders, and nothing in scmm
imports it.
"""

from .choice import Decoding, choose, top_k_candidates
from .run_files import CHECKPOINTS, RunFiles, checkpoint_path, encode_prompt, read_run

__all__ = [
    "CHECKPOINTS",
    "Decoding",
    "RunFiles",
    "checkpoint_path",
    "choose",
    "encode_prompt",
    "read_run",
    "top_k_candidates",
]
