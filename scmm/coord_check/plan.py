"""What a coordinate check will run, checked before any compute (no TensorFlow here).

``make_plan`` takes the experiment settings (preset, file and ``--model.x.y`` overrides already
merged) and the check's own options, and returns a ``Plan``: the settings of every width, the
model seeds and the step count. Every impossible input (a width that does not fit the mixer,
too few widths, a bad count) raises ``ValueError`` here, so the command line reports it as one
``error:`` line before TensorFlow loads.

Width scaling (the muP regime): ``model.hidden_size = width``; for attention,
``model.sequence.heads`` stays fixed and ``head_size = width / heads``, so the attention logits'
1/head_size (muP, u-muP) or 1/sqrt(head_size) (standard) scaling is exercised. The FFN
multiple, conv kernel size and groups, depth, data and training settings stay as given.
"""

import dataclasses
import math
from typing import Any, Sequence

from ..experiments.settings import ExperimentSettings
from ..models.settings import AttentionSettings

DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_SEEDS = 3
DEFAULT_STEPS = 3
DEFAULT_TOLERANCE = 0.15
DEFAULT_FROM_STEP = 1


@dataclasses.dataclass(frozen=True)
class Plan:  # pylint: disable=too-many-instance-attributes
    """Everything a coordinate check computes with; see the module docstring."""

    settings: ExperimentSettings
    """The settings as given (master seed resolved; the width fields are replaced per width)."""
    widths: tuple[int, ...]
    """Ascending, distinct, at least two."""
    by_width: dict[int, ExperimentSettings]
    """Each width's settings (hidden size, head size), validated."""
    model_seeds: tuple[int, ...]
    """One model (init) seed per repeat; every width uses the same seeds."""
    steps: int
    tolerance: float
    from_step: int

    def with_vocab_size(self, vocab: int) -> "Plan":
        """The plan with ``model.vocab_size`` taken from the data (0) or checked against it
        (as a run does), in every width's settings."""
        wanted = self.settings.model.vocab_size
        if wanted not in (0, vocab):
            raise ValueError(
                f"model.vocab_size={wanted} but the data's vocabulary has {vocab} characters"
                " (expected 0 to take it from the data, or equal)"
            )

        def sized(settings: ExperimentSettings) -> ExperimentSettings:
            model = dataclasses.replace(settings.model, vocab_size=vocab)
            return dataclasses.replace(settings, model=model)

        return dataclasses.replace(
            self,
            settings=sized(self.settings),
            by_width={w: sized(s) for w, s in self.by_width.items()},
        )

    def scaled_fields(self) -> dict[str, list[Any]]:
        """The settings that change with width, by dotted path, one value per width."""
        fields: dict[str, list[Any]] = {
            "model.hidden_size": [self.by_width[w].model.hidden_size for w in self.widths]
        }
        if isinstance(self.settings.model.sequence, AttentionSettings):
            fields["model.sequence.head_size"] = [
                getattr(self.by_width[w].model.sequence, "head_size") for w in self.widths
            ]
        return fields


def width_settings(settings: ExperimentSettings, width: int) -> ExperimentSettings:
    """``settings`` at ``width`` (hidden size; attention head size = width / heads), validated.

    ValueError names the width when it does not fit (e.g. not divisible by the heads or the
    conv groups) or any other setting is impossible at that width.
    """
    model = settings.model
    sequence = model.sequence
    if isinstance(sequence, AttentionSettings):
        if sequence.heads < 1 or width % sequence.heads:
            raise ValueError(
                f"width {width} is not divisible by model.sequence.heads={sequence.heads}"
                " (the heads stay fixed and head_size = width / heads)"
            )
        sequence = dataclasses.replace(sequence, head_size=width // sequence.heads)
    model = dataclasses.replace(model, hidden_size=width, sequence=sequence)
    scaled = dataclasses.replace(settings, model=model)
    try:
        scaled.validate()
    except ValueError as error:
        raise ValueError(f"width {width}: {error}") from None
    return scaled


def _check_counts(widths: Sequence[int], seeds: int, steps: int, from_step: int) -> None:
    if not widths:
        raise ValueError("--widths is empty; give at least two widths, e.g. --widths 64 128 256")
    if any(w < 1 for w in widths):
        raise ValueError(f"--widths must all be >= 1, got {list(widths)}")
    if len(set(widths)) != len(widths):
        raise ValueError(f"--widths must be distinct, got {list(widths)}")
    if len(widths) < 2:
        raise ValueError(f"--widths needs at least two widths to fit a slope, got {list(widths)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 (updates after init), got {steps}")
    if not 0 <= from_step <= steps:
        raise ValueError(f"--from-step must be in [0, --steps={steps}], got {from_step}")


def make_plan(  # pylint: disable=too-many-arguments
    settings: ExperimentSettings,
    widths: Sequence[int],
    seeds: int = DEFAULT_SEEDS,
    steps: int = DEFAULT_STEPS,
    tolerance: float = DEFAULT_TOLERANCE,
    from_step: int = DEFAULT_FROM_STEP,
) -> Plan:
    """The checked plan (see the module docstring); ValueError on any impossible input.

    Seeds: the master seed (``--seed``, default 0) draws the fixed training batch; model seed
    ``i`` is ``model.seed + i`` (``model.seed`` default 0), the same at every width, so each
    width sees the same data and the same seeds' initialisations.
    """
    _check_counts(widths, seeds, steps, from_step)
    if not math.isfinite(tolerance) or tolerance < 0:  # NaN too: it would pass nothing
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    master = settings.seed if settings.seed is not None else 0
    first_seed = settings.model.seed if settings.model.seed is not None else 0
    training = dataclasses.replace(settings.training, steps=steps)
    settings = dataclasses.replace(settings, seed=master, training=training)
    ordered = tuple(sorted(int(w) for w in widths))
    by_width = {w: width_settings(settings, w) for w in ordered}
    return Plan(
        settings=settings,
        widths=ordered,
        by_width=by_width,
        model_seeds=tuple(first_seed + i for i in range(seeds)),
        steps=steps,
        tolerance=float(tolerance),
        from_step=from_step,
    )
