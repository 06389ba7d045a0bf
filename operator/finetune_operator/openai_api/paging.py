"""Cursor pages as the OpenAI API gives them: newest first, ``after`` the id of the last item seen,
``limit`` items at most, and ``has_more``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import invalid
from .params import metadata, only_known

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def page_request(query: Mapping[str, str], extra: tuple[str, ...] = ()) -> tuple[str | None, int]:
    """``after`` and ``limit`` of a list request; every other name (but ``extra``) refused."""
    only_known({name: None for name in query if not name.startswith("metadata[")}, ("after", "limit", *extra))
    raw = query.get("limit")
    if raw is None:
        limit = DEFAULT_LIMIT
    elif raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT:
        limit = int(raw)
    else:
        raise invalid(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    after = query.get("after")
    if after is not None and not 0 < len(after) <= 253:
        raise invalid("after must be the id of an item of the previous page", "after")
    return after, limit


def metadata_filter(query: Mapping[str, str]) -> dict[str, str]:
    """``metadata[k]=v`` query parameters (what the SDKs send for ``metadata={...}``)."""
    pairs = {name[len("metadata[") : -1]: value for name, value in query.items() if name.startswith("metadata[")}
    if any(not name.endswith("]") for name in query if name.startswith("metadata[")):
        raise invalid("filter by metadata as metadata[key]=value", "metadata")
    return metadata(pairs)


def page(items: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """The page after the item ``after``; empty when ``after`` is no longer listed (a page from the start
    again would make a client that follows pages loop)."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            return {"object": "list", "data": [], "has_more": False}
        start = ids.index(after) + 1
    chosen = list(items[start : start + limit])
    return {"object": "list", "data": chosen, "has_more": start + limit < len(items)}
