"""GET /v1/models: the catalog's FineTuneModels the namespace may use, and the namespace's Ready ModelAdapters
(their names are the jobs' ``fine_tuned_model``)."""

from __future__ import annotations

from typing import Any

from .admission import catalog_entry
from .admission import usable as may_use
from .jobs import unix


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
    usable = [catalog_model_object(m) for m in catalog if may_use(catalog_entry(m), namespace, labels)]
    ready = [adapter_model_object(a) for a in adapters if is_ready(a)]
    return {"object": "list", "data": sorted(usable, key=lambda m: m["id"]) + sorted(ready, key=lambda m: m["id"])}
