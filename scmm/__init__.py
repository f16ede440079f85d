"""scmm: unit scaling for TensorFlow/Keras models.

Subpackages:
  uu           drop-in unit-scaled Keras layers (``from scmm import uu``)
  functional   unit-scaled ops under ``keras.ops`` names (``from scmm import U``)
  transforms   ``unit_scale(model)``, ``simulate_fp8(model)`` for any Keras model
  datasets     character vocabularies, corpora and batching
  layers       scmm's own layer family over op sets (the char LMs' layers)
  models       the character LM built from one settings dataclass
  training     optimisers, loss, compiled multi-step training and evaluation
  pedal        execution adapter: device selection, XLA, streaming batches
  experiments  settings tree, presets, CLI, loggers, checkpoints

TensorFlow loads only when one of these is first used (``import scmm`` stays cheap, so the
entry points can report bad arguments before it loads).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "U": ("scmm.functional", None),
    "unit_scale": ("scmm.transforms", "unit_scale"),
    "simulate_fp8": ("scmm.transforms", "simulate_fp8"),
    "simulate_format": ("scmm.transforms", "simulate_format"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'scmm' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
