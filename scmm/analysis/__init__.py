"""Scale analysis: per-tensor statistics of the forward/backward pass and their figure.

``collect_scales`` (one batch -> ``ScaleRecord`` list), ``write_scales_json`` /
``load_scales_json`` (atomic JSON list) and ``plot_scales`` (PNG of log2 RMS per layer against
the float16 / bfloat16 / FP8 ranges, drawn on an Agg canvas: no display or pyplot needed), and
``plot_training_curves`` (a run's train/validation BPC and learning rate against step, from its
``log.jsonl``); the coordinate check's maths (``coordinates``: slopes of log2 RMS against
log2 width, the verdict, its JSON record and figure); ``analyse`` (``model_scales``): the same
records and figure for one pass of any Keras model, per layer call.
"""

import os

from ..quiet_import import import_tensorflow_quietly

# ``python -m scmm.analysis`` loads this package (and TensorFlow, through Keras) before its
# ``__main__``: keep TensorFlow's start-up log lines out of the tool's output too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import_tensorflow_quietly()

# pylint: disable=wrong-import-position
from .coordinates import (
    CoordinateCheck,
    RunMeasurement,
    Verdict,
    fit_slope,
    judge,
    load_check_json,
    plot_check,
    slope_table,
    summarise,
    write_check_json,
)
from .curves import draw_training_curves, plot_training_curves, training_curves
from .model_scales import LayerCall, ModelScales, WeightScales, analyse
from .plots import plot_scales
from .scales import (
    FORMATS,
    LOSS_GRADIENT_NAME,
    PASSES,
    FormatRange,
    ScaleRecord,
    capture_outputs,
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
    "CoordinateCheck",
    "FORMATS",
    "LOSS_GRADIENT_NAME",
    "PASSES",
    "FormatRange",
    "LayerCall",
    "ModelScales",
    "RunMeasurement",
    "ScaleRecord",
    "Verdict",
    "WeightScales",
    "analyse",
    "capture_outputs",
    "collect_scales",
    "draw_training_curves",
    "fit_slope",
    "format_fractions",
    "format_range",
    "judge",
    "layer_paths",
    "load_check_json",
    "load_scales_json",
    "plot_check",
    "plot_scales",
    "plot_training_curves",
    "select",
    "slope_table",
    "summarise",
    "tensor_record",
    "training_curves",
    "write_check_json",
    "write_scales_json",
]
