"""GET /v1/models: the catalog's FineTuneModels the namespace may use, and the namespace's Ready ModelAdapters
(their names are the jobs' ``fine_tuned_model``)."""

from __future__ import annotations

from typing import Any

from .jobs import unix


def _matches(expression: dict[str, Any], labels: dict[str, str]) -> bool:
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False


def namespace_may_use(model: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    """A FineTuneModel's spec.limits: a namespace listed in namespaces or matched by namespaceSelector
    (either, when both are set); no restriction when neither is."""
    limits = (model.get("spec") or {}).get("limits") or {}
    listed, selector = limits.get("namespaces") or [], limits.get("namespaceSelector")
    if not listed and selector is None:
        return True
    if namespace in listed:
        return True
    if selector is None:
        return False
    match = selector.get("matchLabels") or {}
    return all(labels.get(key) == value for key, value in match.items()) and all(
        _matches(expression, labels) for expression in selector.get("matchExpressions") or []
    )


def is_ready(adapter: dict[str, Any]) -> bool:
    status = adapter.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return status.get("phase") == "Ready" or (bool(ready) and ready[0].get("status") == "True")


def catalog_model_object(model: dict[str, Any]) -> dict[str, Any]:
    meta = model.get("metadata") or {}
    return {
        "id": meta.get("name"),
        "object": "model",
        "created": unix(meta.get("creationTimestamp")) or 0,
        "owned_by": "system",
    }


def adapter_model_object(adapter: dict[str, Any]) -> dict[str, Any]:
    meta = adapter.get("metadata") or {}
    return {
        "id": meta.get("name"),
        "object": "model",
        "created": unix(meta.get("creationTimestamp")) or 0,
        "owned_by": meta.get("namespace"),
    }


def models_list(
    catalog: list[dict[str, Any]], adapters: list[dict[str, Any]], namespace: str, labels: dict[str, str]
) -> dict[str, Any]:
    usable = [catalog_model_object(m) for m in catalog if namespace_may_use(m, namespace, labels)]
    ready = [adapter_model_object(a) for a in adapters if is_ready(a)]
    return {"object": "list", "data": sorted(usable, key=lambda m: m["id"]) + sorted(ready, key=lambda m: m["id"])}
