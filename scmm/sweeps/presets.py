"""Named sweeps (``run_sweep.py NAME``), written in the same schema as a sweep file.

- ``paper-table``: the Unit Scaling paper's test-set table (§A of the paper notes): attention
  pre- and post-norm, conv and RNN pre-norm; FP32 and FP16; regular and unit-scaled; loss
  scale 1 and 2048 for regular FP16 -- 20 configurations. Each searches its learning rate from
  2^-14 (regular) or 2^-8 (unit) upward by x2, 3 repeats per LR, stopping 0.1 BPC above the
  best; 2^19 steps on WikiText-103. Real hardware only (about 20 x 7 x 3 runs of hours each).
- ``paper-table-small``: the same 20 configurations and method, reduced to finish in about 90
  minutes on a 2-core CPU (2 workers x 1 thread) on the embedded corpus (or ``--data.path``).
  Reductions: hidden 128 -> 64; depth 8 -> 2 for attention and conv (RNN keeps the paper's 2)
  with 2 heads x 32; 2^19 -> 400 steps, the LR halving twice over the run (the paper: 8 times);
  LR search x4 per point instead of x2, starting one step below the measured optima (2^-9
  regular, 2^-6 unit: attention's best are 2^-7 and 2^-4) rather than at 2^-14 / 2^-8, at most 4
  points; train BPC on 2^14 characters. Kept: batch 8 x 256 characters (so gradients have the
  paper's 1/2048 scale, which is what underflows in FP16), loss scales 1 and 2048, 3 repeats,
  threshold 0.1. FP16 is *simulated* (column ``float16-sim``): the models compute in float32
  with every matmul's inputs and the gradient arriving at its output (the head's included)
  rounded to float16, non-saturating (``scmm.precision``). Weights keep float32 masters.
  Real FP16 (the paper's columns) is what ``paper-table`` runs.
- ``fp16-underflow-small``: paper-table-small's four models and reductions with float16 that
  flushes subnormals to zero (``model.precision.subnormals false``, as hardware without
  subnormal support does), regular FP16 at loss scale 1 and 2048 and unit-scaled FP16, beside
  FP32 and IEEE FP16, at the learning rates paper-table-small found best (regular 2^-7 and
  2^-5, unit 2^-4), 3 repeats. The regular models' gradients sit at ~2^-16, inside float16's
  subnormal range, so whether the paper's FP16 degradation appears at this scale depends on
  subnormal support; this sweep measures both.
- ``fp8-small``: the reduced attention model of ``paper-table-small`` in FP32, simulated FP8
  (E4M3 activations and weights, E5M2 gradients; regular naive, regular with per-tensor
  dynamic scaling, unit-scaled) and bfloat16, regular and unit-scaled, 2 repeats per LR.
- ``umup-fp8-small``: u-mup on the reduced attention model (umup-transfer-small's width 64)
  in FP32 and simulated FP8 without any per-tensor or loss scaling, on a 3-point LR grid
  around its optimum, 2 repeats (issue 14's FP8 check: FP8 at FP32's best LR).
- ``uscale-small``: the four paper models reduced to run on a 2-core CPU, FP32, regular vs
  unit-scaled, each at its best LR of a short search (the unit-scaling issue's quality check).
- ``umup-transfer-small``: learning-rate transfer across width, the muTransfer plot (issue 14).
  paper-table-small's reduced attention model (depth 2, 400 steps, the LR halving twice, batch 8
  x 256 characters, FP32, 1 repeat) at widths 64, 128 and 256 with 2 heads of width / 2; regular
  (standard parametrisation, the paper's running-mean residuals) and u-mup (its own residual
  rule, which the running-mean setting reads as), each on a fixed LR grid x2 per point
  (``lr_search`` ``mode: grid``): regular 2^-11 .. 2^-5, u-mup 2^-3 .. 2^1, 36 trials. Besides
  the usual outputs it writes ``transfer.md`` (best LR and BPC per width and scheme, the
  optimum's shift from width 64 to 256 in grid steps, width 256's BPC at width 64's best LR
  minus its own best, both schemes at width 256) and ``transfer.png`` (validation BPC against
  log2 LR, a curve per width, a panel per scheme; ``scmm.sweeps.transfer``). Measured with 1
  thread per trial and 2 at once (the sweep's ``--workers 2``): width 64 / 128 / 256 trials take
  47 / 96 / 197 s on an otherwise idle 2-core CPU, so 12 LR points x 340 s / 2 workers ~ 34
  minutes plus the last trial's tail, ~37 minutes. While other work shared the CPU (load average
  3.5-6.7), trials took 1.3-2.9x longer (width 256: 1.3-1.9x), which would make it ~60-70
  minutes. The grids were placed by pilots on the embedded corpus (numbers beside them below),
  one step or more beyond every optimum found; on other text (``--data.path``) check
  ``transfer.md``'s "interior" column (larger splits also make each evaluation longer).
- ``umup-depth-small``: the same schemes, grids and model at width 64 (2 heads x 32) with depth
  2, 4 and 8 (``transfer_axis: depth``), 36 trials. Depth 4 and 8 trials were timed only while
  other work loaded the CPU (load average 3.5-5 on 2 cores): 281-426 s and 332-615 s, XLA
  compilation alone 72-244 s. Scaled by depth from the idle depth-2 trial (47 s), an estimated
  ~90 and ~170 s idle: 12 x ~310 s / 2 workers ~ 31 minutes plus the tail, ~35 (an estimate).
- ``rigl-small``: sparse training (issue 16) on paper-table-small's reduced attention model
  (hidden 64, depth 2, 2 heads x 32, 400 steps, FP32): dense, static sparse, SET and RigL at
  90% sparsity of the hidden weights, element (block 1) and block-16 sparsity, regular and
  unit-scaled at their dense best LRs (2^-7, 2^-4), 3 repeats, 42 trials. RigL/SET update
  every 20 steps (14 updates before T = 300, the drop fraction 0.3 on a cosine).
- ``smoke``: two tiny configurations and a two-point LR search, for tests.
"""

import copy
from typing import Any

# paper-table-small: steps per run (the paper: 2^19).
_SMALL_STEPS = 400

_FP16_SIMULATED = {
    "model.precision.activations": "float16",
    "model.precision.weights": "float16",
    "model.precision.gradients": "float16",
    "model.precision.saturate": False,
    "model.precision.head": True,
}

# The reduced setting shared by paper-table-small and fp8-small (the reductions are listed in
# the module docstring).
_SMALL_OVERRIDES: dict[str, Any] = {
    "data.path": None,
    "model.hidden_size": 64,
    "model.depth": 2,
    "training.steps": _SMALL_STEPS,
    "training.valid_interval": _SMALL_STEPS,
    # The paper halves the LR 8 times over 2^19 steps; 8 halvings in 400 steps would leave
    # ~70 steps of useful training, so here it halves twice over the run.
    "training.optimiser.learning_rate_decay": 2 / _SMALL_STEPS,
    "output.wandb": "off",
    "output.train_eval_chars": 2**14,
    "seed": 1,
}

_FP8 = {
    "model.precision.activations": "e4m3",
    "model.precision.weights": "e4m3",
    "model.precision.gradients": "e5m2",
}

_FP16 = {"model.dtype": "float16", "model.weights": "stochastic"}

_PAPER_COLUMNS: dict[str, Any] = {
    "dtype": {"float32": {"model.dtype": "float32"}, "float16": _FP16},
    "variant": {
        "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-14},
        "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-8},
    },
    "loss_scale": {"1": {"training.loss_scale": 1.0}, "2048": {"training.loss_scale": 2048.0}},
}
_PAPER_FILTERS: list[dict[str, Any]] = [
    {"model": "conv", "norm": "post"},
    {"model": "rnn", "norm": "post"},
    {"variant": "unit", "loss_scale": "2048"},
    {"dtype": "float32", "loss_scale": "2048"},
]
_MODELS = {
    "attention": {"preset": "paper-attention"},
    "conv": {"preset": "paper-conv"},
    "rnn": {"preset": "paper-rnn"},
}
_NORMS = {"pre": {"model.residual.norm": "pre"}, "post": {"model.residual.norm": "post"}}
# The table rows (model x norm axes) of the reduced paper sweeps: 2 heads x 32 for attention.
_SMALL_ROWS: dict[str, Any] = {
    "model": {
        **_MODELS,
        "attention": {"preset": "paper-attention", "model.sequence.head_size": 32},
    },
    "norm": _NORMS,
}

# umup-transfer-small and umup-depth-small (module docstring): paper-table-small's model with
# its heads fixed at 2 (head_size = width / 2), at every width and depth of the transfer axes.
_TRANSFER_HEADS = 2
_TRANSFER_WIDTHS = (64, 128, 256)
_TRANSFER_DEPTHS = (2, 4, 8)
_TRANSFER_OVERRIDES: dict[str, Any] = {
    **_SMALL_OVERRIDES,
    "model.sequence.heads": _TRANSFER_HEADS,
    "model.sequence.head_size": 64 // _TRANSFER_HEADS,
}
# The LR grids, x2 per point: regular 2^-11 .. 2^-5, u-mup 2^-3 .. 2^1. Placed by pilots (400
# steps, embedded corpus, 1 thread, validation BPC): regular's best moved down a step or more
# per doubling -- width 64: 2.721 at 2^-7; 128: 2.877 / 2.727 / 2.849 at 2^-10 / -9 / -8; 256:
# 2.734 / 2.628 / 3.081 / 3.905 at 2^-11 / -10 / -9 / -7 -- and u-mup's stayed at 2^-1 -- width
# 64: 3.349 / 2.779 / 3.291 at 2^-3 / -1 / 1; 256: 3.116 / 2.542 / 3.398. So each grid keeps at
# least one rate on either side of every pilot optimum (two on regular width 64's high side,
# not placed to better than x4 by paper-table-small). Both keep the paper's running-mean
# residual setting, which u-mup reads as its own rule (the pilots set weighting plain, which
# it reads the same way: scmm.schemes.scheme.UmupScheme).
_TRANSFER_SCHEMES: dict[str, Any] = {
    "regular": {
        "model.scaling.type": "regular",
        "lr_search.start": 2**-11,
        "lr_search.max_points": 7,
    },
    "umup": {
        "model.scaling.type": "umup",
        "lr_search.start": 2**-3,
        "lr_search.max_points": 5,
    },
}

SWEEPS: dict[str, dict[str, Any]] = {
    "paper-table": {
        "description": "The paper's test-set table: 20 configurations, LR search, 3 repeats.",
        "base": "paper-attention",
        "overrides": {"output.wandb": "auto"},
        "axes": {
            "model": _MODELS,
            "norm": _NORMS,
            **_PAPER_COLUMNS,
        },
        "filters": _PAPER_FILTERS,
        "repeats": 3,
        "lr_search": {"factor": 2.0, "threshold": 0.1, "max_points": 12},
        "table_rows": ["model", "norm"],
    },
    "paper-table-small": {
        "description": (
            "The paper-table grid and LR-search method scaled down to ~90 minutes on a 2-core"
            " CPU (reductions in the module docstring)."
        ),
        "base": "paper-attention",
        "overrides": _SMALL_OVERRIDES,
        "axes": {
            **_SMALL_ROWS,
            # FP16 is simulated: every matmul's inputs and output gradient (head included)
            # rounded to float16. (Chosen when float16 measured ~30x slower under XLA on CPU;
            # since the projection fix it runs ~1.6x float32, so real FP16 is now affordable.)
            "dtype": {"float32": {"model.dtype": "float32"}, "float16-sim": _FP16_SIMULATED},
            "variant": {
                "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-9},
                "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-6},
            },
            "loss_scale": _PAPER_COLUMNS["loss_scale"],
        },
        "filters": _PAPER_FILTERS,
        "repeats": 3,
        "lr_search": {"factor": 4.0, "threshold": 0.1, "max_points": 4},
        "table_rows": ["model", "norm"],
    },
    "fp16-underflow-small": {
        "description": (
            "paper-table-small's models with float16 that flushes subnormals (FTZ): regular"
            " FP16 with loss scale 1 and 2048 and unit-scaled FP16, against FP32 and IEEE"
            " FP16, at the LRs paper-table-small found best."
        ),
        "base": "paper-attention",
        "overrides": _SMALL_OVERRIDES,
        "axes": {
            **_SMALL_ROWS,
            "dtype": {
                "float32": {"model.dtype": "float32"},
                "float16-sim": _FP16_SIMULATED,
                "float16-sim-ftz": {**_FP16_SIMULATED, "model.precision.subnormals": False},
            },
            # paper-table-small's best: regular 2^-7 (conv 2^-5), unit 2^-4 for every model.
            "variant": {
                "regular": {
                    "model.scaling.type": "regular",
                    "lr_search.start": 2**-7,
                    "lr_search.max_points": 2,
                },
                "unit": {
                    "model.scaling.type": "unit",
                    "lr_search.start": 2**-4,
                    "lr_search.max_points": 1,
                },
            },
            "loss_scale": _PAPER_COLUMNS["loss_scale"],
        },
        # IEEE FP16 with loss scale 2048 and unit-scaled IEEE FP16 are in paper-table-small.
        "filters": [
            *_PAPER_FILTERS,
            {"dtype": "float16-sim", "loss_scale": "2048"},
            {"dtype": "float16-sim", "variant": "unit"},
        ],
        "repeats": 3,
        "lr_search": {"factor": 4.0, "threshold": 0.1, "max_points": 2},
        "table_rows": ["model", "norm"],
    },
    "fp8-small": {
        "description": (
            "Paper attention model (reduced) in FP32, FP8 regular (naive and per-tensor"
            " scaled), FP8 unit-scaled, and bfloat16 regular/unit, each at its best LR."
        ),
        "base": "paper-attention",
        "overrides": {**_SMALL_OVERRIDES, "model.sequence.head_size": 32},
        "axes": {
            "format": {
                "float32": {},
                "fp8": _FP8,
                "fp8-scaled": {**_FP8, "model.precision.scaling": "dynamic"},
                "bfloat16": {"model.dtype": "bfloat16"},
            },
            "variant": {
                "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-9},
                "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-6},
            },
        },
        # Per-tensor scaling is the regular models' crutch; unit scaling needs none.
        "filters": [{"format": "fp8-scaled", "variant": "unit"}],
        "repeats": 2,
        "lr_search": {"factor": 4.0, "threshold": 0.1, "max_points": 4},
        "table_rows": ["variant"],
    },
    "umup-transfer-small": {
        "description": (
            "Learning-rate transfer across width (64, 128, 256): regular (standard"
            " parametrisation) and u-mup on an LR grid, paper-table-small's attention model"
            " (~40 minutes on a 2-core CPU)."
        ),
        "base": "paper-attention",
        "overrides": _TRANSFER_OVERRIDES,
        "axes": {
            "scheme": _TRANSFER_SCHEMES,
            "width": {
                str(width): {
                    "model.hidden_size": width,
                    "model.sequence.head_size": width // _TRANSFER_HEADS,
                }
                for width in _TRANSFER_WIDTHS
            },
        },
        "repeats": 1,
        "lr_search": {"mode": "grid", "factor": 2.0},
        "table_rows": ["width"],
        "transfer_axis": "width",
    },
    "umup-depth-small": {
        "description": (
            "Learning-rate transfer across depth (2, 4, 8 layers at width 64): regular and"
            " u-mup on umup-transfer-small's LR grid and model."
        ),
        "base": "paper-attention",
        "overrides": _TRANSFER_OVERRIDES,
        "axes": {
            "scheme": _TRANSFER_SCHEMES,
            "depth": {str(depth): {"model.depth": depth} for depth in _TRANSFER_DEPTHS},
        },
        "repeats": 1,
        "lr_search": {"mode": "grid", "factor": 2.0},
        "table_rows": ["depth"],
        "transfer_axis": "depth",
    },
    "rigl-small": {
        "description": (
            "Sparse training at 90% on paper-table-small's attention model: dense, static sparse,"
            " SET and RigL, element (block 1) and block-16 sparsity, regular and unit-scaled,"
            " each at its dense model's best LR, 3 repeats."
        ),
        "base": "paper-attention",
        "overrides": {
            **_SMALL_OVERRIDES,
            "model.sequence.head_size": 32,
            # 400 steps: ΔT 20 gives 14 updates before T = 0.75 x 400 (the RigL paper's T_end).
            "training.sparsity.update_interval": 20,
        },
        "axes": {
            "method": {
                "dense": {},
                "static": {
                    "training.sparsity.sparsity": 0.9,
                    "training.sparsity.update_interval": None,
                },
                "set": {"training.sparsity.sparsity": 0.9, "training.sparsity.regrow": "random"},
                "rigl": {"training.sparsity.sparsity": 0.9},
            },
            "block": {
                "1": {"training.sparsity.block_size": 1},
                "16": {"training.sparsity.block_size": 16},
            },
            "variant": {
                # paper-table-small's best dense LRs for the reduced attention model.
                "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-7},
                "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-4},
            },
        },
        "filters": [{"method": "dense", "block": "16"}],  # dense has no blocks
        "repeats": 3,
        "lr_search": {"mode": "grid", "factor": 2.0, "max_points": 1},
        "table_rows": ["method", "block"],
    },
    "umup-fp8-small": {
        "description": (
            "u-mup on umup-transfer-small's width-64 model (paper-table-small's attention model)"
            " in FP32 and simulated FP8 (E4M3 activations and weights, E5M2 gradients; no"
            " per-tensor or loss scaling) on u-mup's grid around its optimum, 2 repeats."
        ),
        "base": "paper-attention",
        "overrides": {**_TRANSFER_OVERRIDES, "model.scaling.type": "umup"},
        "axes": {"format": {"float32": {}, "fp8": _FP8}},
        "repeats": 2,
        # 2^-2, 2^-1, 2^0: umup-transfer-small's width-64 optimum 2^0 and the two rates below
        # (2^1 was 0.64 BPC worse there: docs/results/umup.md).
        "lr_search": {"mode": "grid", "factor": 2.0, "start": 2**-2, "max_points": 3},
        "table_rows": ["format"],
        "transfer_axis": "format",
    },
    "uscale-small": {
        "description": "Paper models at reduced scale, FP32, regular vs unit-scaled, LR search.",
        "base": "paper-attention",
        "overrides": {
            "data.path": None,
            "data.sequence_length": 128,
            "data.overlap_length": 16,
            "model.depth": 4,
            "training.steps": 600,
            "training.valid_interval": 600,
            "training.optimiser.learning_rate_decay": 0.0,
            "output.wandb": "off",
            "output.train_eval_chars": 2**14,
            "seed": 1,
        },
        "axes": {
            "model": {
                "attention": {"preset": "paper-attention"},
                "attention-post": {"preset": "paper-attention-post"},
                "conv": {"preset": "paper-conv"},
                "rnn": {"preset": "paper-rnn", "model.depth": 2},
            },
            "variant": {
                "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-11},
                "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-9},
            },
        },
        "repeats": 1,
        "lr_search": {"factor": 2.0, "threshold": 0.05, "max_points": 6},
        "table_rows": ["model"],
    },
    "smoke": {
        "description": "Tiny end-to-end sweep for tests (about a minute on 2 cores).",
        "base": "smoke",
        "overrides": {
            "training.steps": 16,
            "training.valid_interval": 16,
            "output.wandb": "off",
            "output.train_eval_chars": 2**10,
            "model.residual.weighting": "mean",
            "seed": 3,
        },
        "axes": {
            "variant": {
                "regular": {"model.scaling.type": "regular"},
                "unit": {"model.scaling.type": "unit"},
            }
        },
        "repeats": 1,
        "lr_search": {"start": 2**-8, "factor": 16.0, "threshold": 0.0, "max_points": 2},
    },
}


def sweep(name: str) -> dict[str, Any]:
    """A copy of the named sweep definition."""
    if name not in SWEEPS:
        raise KeyError(f"unknown sweep {name!r}; expected one of {', '.join(sorted(SWEEPS))}")
    return copy.deepcopy(SWEEPS[name])
