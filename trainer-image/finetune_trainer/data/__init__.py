"""The trainer's data pipeline: files in, tokenized examples with loss masks out.

Public surface: :func:`load_data` and what it returns (:class:`DataBundle` of :class:`Example` or
:class:`PreferenceExample`, per-source :class:`SourceStats`), and the two errors a user can cause,
:class:`DataError` (exit code 65) and :class:`ConfigError` (exit code 78), re-exported from
finetune_trainer.errors. The modules below are free to change.
"""

from ..errors import ConfigError, DataError
from .pipeline import DataBundle, load_data
from .types import IGNORE_INDEX, Batch, Example, PreferenceExample, SourceStats

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "ConfigError",
    "DataBundle",
    "DataError",
    "Example",
    "PreferenceExample",
    "SourceStats",
    "load_data",
]
