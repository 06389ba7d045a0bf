"""Owner references: what the operator creates for a FineTuneJob or a ModelAdapter goes with it."""

from __future__ import annotations

from ..api import API_VERSION, FineTuneJob, ModelAdapter


def owner_reference(owner: FineTuneJob | ModelAdapter, block_owner_deletion: bool = True) -> dict:
    """``block_owner_deletion`` needs update on the owner's finalizers where the
    OwnerReferencesPermissionEnforcement admission plugin runs: only where something waits for the child."""
    reference = {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
    }
    if block_owner_deletion:
        reference["blockOwnerDeletion"] = True
    return reference
