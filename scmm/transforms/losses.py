"""The unit-scaled twin of a compiled model's loss (``unit_scale`` step 5).

Only a softmax cross-entropy *from logits* has one: a unit-scaled loss scales the logits'
gradient, which needs the logits (a loss on probabilities has no unit-scaled form here).
"""

from typing import Any

import keras

from .report import Entry


def unit_scaled_loss(loss: Any) -> tuple[Any, Entry]:
    """(the loss to compile with, what was done) for a compiled model's ``loss``."""
    kind = type(loss).__name__ if not isinstance(loss, str) else repr(loss)
    # Exactly Keras's class: a subclass may compute another loss.
    # pylint: disable-next=unidiomatic-typecheck
    if type(loss) is keras.losses.SparseCategoricalCrossentropy:
        config = loss.get_config()
        if not config.get("from_logits", False):
            return loss, Entry("loss", kind, "unhandled", detail="from_logits=False: needs logits")
        from ..uu.losses import SparseCategoricalCrossentropy

        new = SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=config.get("ignore_class")
        )
        return new, Entry("loss", kind, "replaced", "uu.losses.SparseCategoricalCrossentropy")
    if type(loss).__module__.startswith("scmm."):
        return loss, Entry("loss", kind, "unchanged", detail="already unit-scaled")
    detail = "no unit-scaled twin (use from_logits=True sparse categorical cross-entropy)"
    return loss, Entry("loss", kind, "unhandled", detail=detail)
