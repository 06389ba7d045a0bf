"""Run-time patches of library internals: what each relies on, and the versions it was written against.

Two speed-ups reach inside libraries: ``fused_lora`` (model.py) swaps the class of PEFT's LoRA
Linear layers for a subclass with a fused forward, and ``chunked_loss`` (losses.py) replaces the
output head's ``forward`` for the duration of a call so that the model returns hidden states. Both
rely on internals no release promises to keep. Each runs only on the library versions it was
written and tested against; on any other version the trainer takes the unpatched path (PEFT's own
forward, the full-logits cross-entropy) and logs once which patch it skipped and why. Falling back
rather than refusing: the patched and unpatched paths compute the same result (the tests compare
them), so a newer library costs speed, never a job. tests/trainer/test_library_patches.py fails
when the installed versions leave these ranges or an internal a patch relies on changes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from dataclasses import dataclass

from . import log


@dataclass(frozen=True)
class LibraryPatch:
    package: str  # the distribution whose internals the patch relies on
    lowest: tuple[int, int]  # (major, minor): the first release it was written for
    below: tuple[int, int]  # the first release it was not checked against
    relies_on: str  # the internals, named for the log line and the tests' messages

    def fits(self, version: str) -> bool:
        release = _major_minor(version)
        return release is not None and self.lowest <= release < self.below

    @property
    def written_for(self) -> str:
        return f">={_dotted(self.lowest)},<{_dotted(self.below)}"


LIBRARY_PATCHES = {
    "fused_lora": LibraryPatch(
        package="peft",
        lowest=(0, 21),
        below=(0, 22),
        relies_on=(
            "peft.tuners.lora.Linear: its class is swapped for a subclass whose forward(x, *args, **kwargs) reads "
            "base_layer, lora_A, lora_B, lora_dropout, scaling, active_adapters, disable_adapters, merged "
            "and lora_variant"
        ),
    ),
    "chunked_loss": LibraryPatch(
        package="transformers",
        lowest=(5, 24),
        below=(5, 25),
        relies_on=(
            "the causal LM's forward calls its output head (get_output_embeddings()) once, with the hidden "
            "states of the logits_to_keep positions as its only argument, and returns what the head returns "
            "as the logits"
        ),
    ),
}

_skipped: set[str] = set()


def patch_fits(name: str) -> bool:
    """Whether the patch ``name`` may run on the installed library; logs once per process when it may not."""
    patch = LIBRARY_PATCHES[name]
    version = installed_version(patch.package)
    if version is not None and patch.fits(version):
        return True
    if name not in _skipped:
        _skipped.add(name)
        log.warning(
            "library_patch_skipped",
            patch=name,
            package=patch.package,
            version=version,
            written_for=patch.written_for,
            relies_on=patch.relies_on,
        )
    return False


@functools.cache
def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def _dotted(release: tuple[int, int]) -> str:
    return ".".join(map(str, release))
