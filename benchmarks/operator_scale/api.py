"""The benchmark's own door to the API server: plain HTTPS with the admin token, one connection per thread.

Independent of the operator's client (which the benchmark measures, and which may change) and of
any Kubernetes library: a request is a method, a path and JSON.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status = status


class Api:
    def __init__(self, server: str, token: str, ca_file: str, timeout: float = 60.0):
        parsed = urllib.parse.urlsplit(server)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 443
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.context = ssl.create_default_context(cafile=ca_file)
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def for_cluster(cls, cluster) -> Api:
        return cls(cluster.server, cluster.admin_token, str(cluster.pki_dir / "ca.crt"))

    def _connection(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout if timeout is not None else self.timeout
        )

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """One request on this thread's kept-alive connection; None for a 404 when ``missing_ok``."""
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, **({"Content-Type": "application/json"} if payload is not None else {})}
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None) or self._connection()
            self._local.connection = connection
            try:
                connection.request(method, url, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # A kept-alive connection the server closed: one fresh try.
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            raise ApiError(response.status, method, path, data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict[str, Any] | None:
        return self.request("GET", path, query=query or None, missing_ok=True)

    def create(self, path: str, body: dict[str, Any], exist_ok: bool = False) -> dict[str, Any] | None:
        try:
            return self.request("POST", path, body)
        except ApiError as error:
            if exist_ok and error.status == 409:
                return None
            raise

    def list(self, path: str, page: int = 500, **query: Any) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection, in pages; returns (items, the list's resourceVersion)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page_query = {**query, "limit": page, **({"continue": token} if token else {})}
            result = self.request("GET", path, query=page_query) or {}
            items.extend(result.get("items") or [])
            token = result.get("metadata", {}).get("continue") or ""
            if not token:
                return items, result.get("metadata", {}).get("resourceVersion", "")

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """Watch events after ``resource_version`` until the server ends the watch (ApiError 410: list again)."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        connection = self._connection(timeout=timeout_seconds + 30)
        try:
            connection.request("GET", f"{path}?{urllib.parse.urlencode(query)}", headers=self.headers)
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, "WATCH", path, response.read().decode(errors="replace"))
            while line := response.readline():
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise ApiError(event["object"].get("code", 500), "WATCH", path, event["object"].get("message", ""))
                yield event
        finally:
            connection.close()
