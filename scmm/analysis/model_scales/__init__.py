"""Scale analysis of any Keras model: ``analyse(model, inputs, targets, loss, out_dir, step)``.

One eager forward and backward pass; per layer call (leaf layers and Functional operation
nodes, in call order, one record per call) the output's and its incoming gradient's
statistics, per trainable weight its value's and gradient's; the same ``ScaleRecord`` kind and
``scales.json`` / ``scales.png`` files as the char LM's ``--analyse``.
"""

from .one_pass import analyse, unit_normal_inputs
from .capture import CallSite, LoggedCall, call_sites, logged_calls
from .objective import UNIT_NORMAL, Objective, check_targets_fit, choose_objective
from .report import OUTPUT_GRADIENT_NAME, WEIGHT_PASS, LayerCall, ModelScales, WeightScales

__all__ = [
    "OUTPUT_GRADIENT_NAME",
    "UNIT_NORMAL",
    "WEIGHT_PASS",
    "CallSite",
    "LayerCall",
    "LoggedCall",
    "ModelScales",
    "Objective",
    "WeightScales",
    "analyse",
    "call_sites",
    "check_targets_fit",
    "choose_objective",
    "logged_calls",
    "unit_normal_inputs",
]
