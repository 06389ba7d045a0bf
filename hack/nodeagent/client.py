"""The agent's door to the API server: plain-dict requests and a streaming watch over the official ApiClient."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(RuntimeError):
    def __init__(self, status: int, reason: str, body: str):
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


class Client:
    """Thread-safe: the pod workers, the heartbeat and the watch share one connection pool."""

    def __init__(self, kubeconfig: str | Path):
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 64
        self.server = configuration.host
        self._api = client.ApiClient(configuration)
        self._watches: set[Any] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for response in list(self._watches):
                response.shutdown()
        self._api.close()

    def _send(self, method: str, path: str, body: Any, query: list[tuple[str, str]], content_type: str, timeout):
        method, url, headers, serialized, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self._api.call_api(method, url, header_params=headers, body=serialized, _request_timeout=timeout)
        except ApiException as error:
            raise ApiError(error.status or 0, error.reason or "", error.body or "") from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        response = self._send(method, path, body, query or [], content_type, timeout)
        data = response.read()
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", data.decode(errors="replace") if data else "")
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def watch(self, path: str, query: list[tuple[str, str]], timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it (after ``timeout_seconds``)."""
        query = [*query, ("watch", "true"), ("timeoutSeconds", str(timeout_seconds)), ("allowWatchBookmarks", "true")]
        response = self._send("GET", path, None, query, "application/json", (10, timeout_seconds + 30))
        raw = response.response
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", raw.read().decode(errors="replace"))
        with self._lock:
            self._watches.add(raw)
        try:
            pending = b""
            for chunk in raw.stream(amt=None, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            with self._lock:
                self._watches.discard(raw)
            raw.close()
