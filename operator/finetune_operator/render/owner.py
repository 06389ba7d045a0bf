"""Owner references: what the operator creates for a FineTuneJob or a ModelAdapter goes with it, and what
is believed about it comes from objects whose controller chain leads back to it."""

from __future__ import annotations

from typing import Any

from finetune_core.api import API_VERSION, FineTuneJob, ModelAdapter


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


def controlled_by(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether the object's controller (its one owner reference with controller: true) has ``uid``.

    A label or a name is anyone's to copy in a namespace, and names come back after a deletion; the
    UID of the object that created it is what tells the operator's children from look-alikes."""
    references = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("controller") is True and ref.get("uid") == uid for ref in references)
