"""Named starting points for the settings tree (``--preset NAME``).

Each preset is a nested dict of overrides over the dataclass defaults, so it is checked by the
same strict decoder as a settings file. The ``paper-*`` presets are the Unit Scaling paper's
character-LM runs (ICML 2023, test-set table "20230115_large_p*"): hidden 128, depth 8 (RNN:
2), batch 8 x 256 characters with 32 characters of overlap, AdamW with the learning rate
halving every 2^16 steps, 2^19 steps, validation every 2^14 steps, running-mean residuals, on
WikiText-103 raw prepared by ``python -m scmm.datasets.wikitext data/wikitext-103``. The
learning rate is the one the paper's sweep most often found best for regular AdamW (2^-10);
the paper searched it per configuration (``run_sweep.py``).
"""

import copy
from typing import Any

Overrides = dict[str, Any]

# The preset a run starts from when none is named (run_experiment.py without --preset; a sweep
# without a base).
DEFAULT_PRESET = "default"

_PAPER_BASE: Overrides = {
    "data": {"path": "data/wikitext-103", "sequence_length": 256, "overlap_length": 32},
    "model": {
        "hidden_size": 128,
        "depth": 8,
        "residual": {"norm": "pre", "weighting": "mean"},
        "sequence": {
            "type": "attention",
            "heads": 2,
            "head_size": 64,
            "frequencies": 128,
            "max_period": 1024.0,
        },
        "token": {"type": "ffn", "multiple": 4.0},
        "dtype": "float32",
    },
    "training": {
        "batch_sequences": 8,
        "steps": 2**19,
        "valid_interval": 2**14,
        "optimiser": {
            "type": "adamw",
            "learning_rate": 2**-10,
            "learning_rate_decay": 2**-16,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": 0.0,
        },
        "loss_scale": 1.0,
    },
}


def _with(base: Overrides, **changes: Overrides) -> Overrides:
    merged = copy.deepcopy(base)
    for section, values in changes.items():
        node = merged.setdefault(section, {})
        for key, value in values.items():
            node[key] = copy.deepcopy(value)
    return merged


PRESETS: dict[str, Overrides] = {
    # Whole pipeline in well under a minute on 2 CPU cores (mostly XLA compile time).
    "smoke": {
        "data": {"sequence_length": 64, "overlap_length": 8},
        "model": {
            "hidden_size": 32,
            "depth": 2,
            "sequence": {
                "type": "attention",
                "heads": 2,
                "head_size": 16,
                "frequencies": 16,
                "max_period": 64.0,
            },
            "token": {"type": "ffn", "multiple": 2.0},
        },
        "training": {
            "batch_sequences": 4,
            "steps": 64,
            "valid_interval": 32,
            "iterations_per_loop": 16,
            "optimiser": {"type": "adamw", "learning_rate": 2**-7},
        },
        "output": {"train_eval_chars": 2**12},
    },
    # About 5 minutes on 2 CPU cores on the embedded corpus.
    "default": {
        "model": {
            "hidden_size": 128,
            "depth": 4,
            "residual": {"norm": "pre", "weighting": "mean"},
            "sequence": {"type": "attention", "heads": 2, "head_size": 64},
        },
        "training": {
            "batch_sequences": 8,
            "steps": 2000,
            "valid_interval": 500,
            "optimiser": {"type": "adamw", "learning_rate": 2**-9},
        },
    },
    "paper-attention": _PAPER_BASE,
    "paper-attention-post": _with(
        _PAPER_BASE,
        model={**_PAPER_BASE["model"], "residual": {"norm": "post", "weighting": "mean"}},
    ),
    "paper-conv": _with(
        _PAPER_BASE,
        model={**_PAPER_BASE["model"], "sequence": {"type": "conv", "kernel_size": 7, "groups": 8}},
    ),
    "paper-rnn": _with(
        _PAPER_BASE,
        model={**_PAPER_BASE["model"], "depth": 2, "sequence": {"type": "rnn", "rebias": 1.0}},
    ),
}


def preset(name: str) -> Overrides:
    """A copy of the named preset's overrides; unknown names list the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])
