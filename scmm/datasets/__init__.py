"""Character-level data: vocabularies, corpora (embedded or from a folder) and batching.

Typical use::

    data = load_dataset(DataSettings())              # embedded stdlib-docstring corpus
    stream = TrainBatchStream(data.splits["train"], sequences=32, sequence_length=256,
                              overlap_length=32, seed=0)
    batch = stream.next(count=4)                     # tokens/mask: (4, 32, 256)
    for batch in eval_batches(data.splits["valid"], 32, 256, 32): ...

WikiText-103 is prepared once with ``python -m scmm.datasets.wikitext OUT_DIR`` and then loaded
with ``DataSettings(path=OUT_DIR)``.
"""

from .batching import Batch, TrainBatchStream, count_eval_batches, eval_batches
from .checks import check_split_lengths, minimum_chars
from .corpus import embedded_corpus
from .loading import SPLITS, Dataset, load_dataset
from .settings import DataSettings
from .storage import DataError
from .vocab import Vocab

__all__ = [
    "Batch",
    "DataError",
    "DataSettings",
    "Dataset",
    "SPLITS",
    "TrainBatchStream",
    "Vocab",
    "check_split_lengths",
    "count_eval_batches",
    "embedded_corpus",
    "eval_batches",
    "load_dataset",
    "minimum_chars",
]
