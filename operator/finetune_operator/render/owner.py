"""Owner references: children of a FineTuneJob are garbage-collected with it."""

from __future__ import annotations

from ..api import API_VERSION, FineTuneJob


def owner_reference(job: FineTuneJob) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
