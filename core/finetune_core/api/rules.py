"""Cross-field rules, written once as CEL for the API server with their Python twin for pydantic.

The API server evaluates ``cel`` at admission (so ``kubectl apply`` and Argo CD dry-runs fail
early); the operator and the trainer evaluate ``holds`` when they validate the same object. The
message is shared, names the field and says what to do. The catalog of invalid specs in the
tests is replayed against both sides, which keeps the twins in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    holds: Callable[[Any], bool] | None = None  # None: a transition rule (needs the old object)
    field_path: str | None = None  # where the API server reports it, relative to the rule's object
    extra: dict[str, Any] = field(default_factory=dict)

    def as_validation(self) -> dict[str, Any]:
        validation: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            validation["fieldPath"] = self.field_path
        validation.update(self.extra)
        return validation


def check(rules: list[Rule], obj: Any) -> Any:
    """Raise ValueError with the message of the first rule ``obj`` breaks (pydantic reports it)."""
    for rule in rules:
        if rule.holds is not None and not rule.holds(obj):
            raise ValueError(rule.message)
    return obj


def immutable(field_name: str, path: str, advice: str) -> Rule:
    return Rule(
        cel=f"self.{field_name} == oldSelf.{field_name}",
        message=f"{path} is immutable after creation; {advice}",
    )
