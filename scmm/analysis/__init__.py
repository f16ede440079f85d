"""Scale analysis: per-tensor statistics of the forward/backward pass and their figure.

``collect_scales`` (one batch -> ``ScaleRecord`` list), ``write_scales_json`` /
``load_scales_json`` (atomic JSON list) and ``plot_scales`` (PNG of log2 RMS per layer against
the float16 / bfloat16 / FP8 ranges, drawn on an Agg canvas: no display or pyplot needed), and
``plot_training_curves`` (a run's train/validation BPC and learning rate against step, from its
``log.jsonl``).
"""

import os

from ..quiet_import import import_tensorflow_quietly

# ``python -m scmm.analysis`` loads this package (and TensorFlow, through Keras) before its
# ``__main__``: keep TensorFlow's start-up log lines out of the tool's output too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import_tensorflow_quietly()

# pylint: disable=wrong-import-position
from .curves import draw_training_curves, plot_training_curves, training_curves
from .plots import plot_scales
from .scales import (
    FORMATS,
    LOSS_GRADIENT_NAME,
    PASSES,
    FormatRange,
    ScaleRecord,
    collect_scales,
    format_fractions,
    format_range,
    layer_paths,
    load_scales_json,
    select,
    tensor_record,
    write_scales_json,
)

__all__ = [
    "FORMATS",
    "LOSS_GRADIENT_NAME",
    "PASSES",
    "FormatRange",
    "ScaleRecord",
    "collect_scales",
    "draw_training_curves",
    "format_fractions",
    "format_range",
    "layer_paths",
    "load_scales_json",
    "plot_scales",
    "plot_training_curves",
    "select",
    "tensor_record",
    "training_curves",
    "write_scales_json",
]
