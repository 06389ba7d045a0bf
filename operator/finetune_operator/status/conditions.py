"""Conditions as Kubernetes API conventions want them: one per type, with the transition time kept
while the status stays the same."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.api import Condition


@dataclass(frozen=True)
class Change:
    """A condition whose status or reason changed: worth a Kubernetes Event."""

    condition: Condition
    previous_status: str | None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> Change | None:
    """Set ``type_`` in place; returns the change when status or reason moved (None otherwise)."""
    for index, existing in enumerate(conditions):
        if existing.type != type_:
            continue
        moved = existing.status != status
        updated = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now if moved else existing.last_transition_time,
            observed_generation=generation,
        )
        conditions[index] = updated
        if moved or existing.reason != reason:
            return Change(updated, existing.status)
        return None
    created = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )
    conditions.append(created)
    return Change(created, None)


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


def net_changes(before: list[Condition], after: list[Condition], changes: list[Change]) -> list[Change]:
    """What one reconcile changed, condition by condition, from ``before`` to ``after``.

    Several steps of one reconcile may set the same condition in turn (observe says the training Job is
    being created, then the preflight says it waits): only where the condition ends up counts. A condition
    that ends where it began changed nothing, is worth no Event, and keeps its lastTransitionTime; without
    this a job waiting for its preflight sent two Events on every reconcile. A status that ends where it began
    keeps its lastTransitionTime even when its reason moved (a change, as set_condition has it)."""
    result = []
    for type_ in dict.fromkeys(change.condition.type for change in changes):
        old, new = get_condition(before, type_), get_condition(after, type_)
        if old is not None and old.status == new.status:
            if old.last_transition_time != new.last_transition_time:
                index = after.index(new)
                new = after[index] = new.model_copy(update={"last_transition_time": old.last_transition_time})
            if old.reason == new.reason:
                continue
        result.append(Change(new, old.status if old is not None else None))
    return result
