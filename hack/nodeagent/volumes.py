"""A pod's volumes as local directories under its work dir (the kubelet's volume manager, in small).

configMap, secret, downwardAPI and projected volumes are written as files (keys or items, with
their modes); projected serviceAccountToken sources are TokenRequests bound to the pod with the
requested audience, rewritten at 80% of their life; emptyDir is a directory (medium Memory too);
hostPath is the path itself; a persistentVolumeClaim is its bound PersistentVolume's hostPath or
local path, or else ``<pvc_root>/<namespace>/<claim>``. Other volume types are not emulated: the
pod stays Pending with a message that says so.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .client import ApiError, Client
from .envvars import ConfigError, field_value, resource_value

DEFAULT_MODE = 0o644
DEFAULT_TOKEN_SECONDS = 3600
MAX_TOKEN_REFRESH_SECONDS = 24 * 3600
REFRESH_FRACTION = 0.8  # the kubelet renews a projected token once 80% of its life has passed


class VolumeError(Exception):
    """A volume cannot be set up yet (the kubelet's FailedMount): the pod stays Pending and it is retried."""


@dataclass
class ProjectedToken:
    file: Path
    service_account: str
    audience: str | None
    expiration_seconds: int
    mode: int
    refresh_at: float = 0.0


def refresh_time(issued_at: float, expiration_seconds: int) -> float:
    return issued_at + REFRESH_FRACTION * min(expiration_seconds, MAX_TOKEN_REFRESH_SECONDS)


class PodVolumes:
    def __init__(self, api: Client, pod: dict[str, Any], root: Path, pvc_root: Path, allocatable: dict[str, str]):
        self.api = api
        self.pod = pod
        self.root = root
        self.pvc_root = pvc_root
        self.allocatable = allocatable
        self.namespace = pod["metadata"]["namespace"]
        self.paths: dict[str, Path] = {}
        self.tokens: list[ProjectedToken] = []

    def prepare(self) -> None:
        """Every volume of the pod, in order; raises VolumeError naming the first that cannot be set up."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.tokens = []
        for volume in self.pod["spec"].get("volumes") or []:
            try:
                self.paths[volume["name"]] = self._materialize(volume)
            except (VolumeError, ApiError, ConfigError, OSError) as error:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{volume["name"]}": {error}') from None

    def refresh_tokens(self) -> None:
        """Rewrite the projected tokens whose refresh time has come (a failure is retried on the next call)."""
        for token in self.tokens:
            if time.time() >= token.refresh_at:
                self._write_token(token)

    # -- one volume ------------------------------------------------------------------------

    def _materialize(self, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        directory = self.root / name
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            return directory
        if "hostPath" in volume:
            return _host_path(volume["hostPath"])
        if "persistentVolumeClaim" in volume:
            return self._claim(volume["persistentVolumeClaim"]["claimName"])
        if "configMap" in volume:
            source = volume["configMap"]
            self._write_object(directory, "ConfigMap", source["name"], source, source.get("defaultMode"))
            return directory
        if "secret" in volume:
            source = volume["secret"]
            self._write_object(directory, "Secret", source["secretName"], source, source.get("defaultMode"))
            return directory
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            self._write_downward(directory, source["items"], source.get("defaultMode"))
            return directory
        if "projected" in volume:
            self._write_projected(directory, volume["projected"])
            return directory
        kind = next((key for key in volume if key != "name"), "unknown")
        raise VolumeError(f"{kind} volumes are not emulated by the node agent (hack/nodeagent)")

    def _write_projected(self, directory: Path, projected: dict[str, Any]) -> None:
        default_mode = projected.get("defaultMode")
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                spec = source["serviceAccountToken"]
                token = ProjectedToken(
                    file=directory / _relative(spec["path"]),
                    service_account=self.pod["spec"].get("serviceAccountName") or "default",
                    audience=spec.get("audience") or None,
                    expiration_seconds=int(spec.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS),
                    mode=DEFAULT_MODE if default_mode is None else default_mode,
                )
                self._write_token(token)
                self.tokens.append(token)
            elif "configMap" in source:
                spec = source["configMap"]
                self._write_object(directory, "ConfigMap", spec["name"], spec, default_mode)
            elif "secret" in source:
                spec = source["secret"]
                self._write_object(directory, "Secret", spec["name"], spec, default_mode)
            elif "downwardAPI" in source:
                self._write_downward(directory, source["downwardAPI"].get("items") or [], default_mode)
            else:
                raise VolumeError(f"projected source {sorted(source)} is not emulated by the node agent")

    def _write_object(self, directory: Path, kind: str, name: str, source: dict[str, Any], default_mode) -> None:
        default_mode = DEFAULT_MODE if default_mode is None else default_mode
        path = f"/api/v1/namespaces/{self.namespace}/{kind.lower()}s/{name}"
        found = self.api.get(path)
        optional = bool(source.get("optional"))
        if found is None:
            if optional:
                directory.mkdir(parents=True, exist_ok=True)
                return
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        payload = _payload(kind, found)
        items = source.get("items")
        if not items:
            items = [{"key": key, "path": key} for key in sorted(payload)]
        for item in items:
            if item["key"] not in payload:
                if optional:
                    continue
                raise VolumeError(f"{kind.lower()} {self.namespace}/{name} has no key {item['key']!r}")
            _write_file(directory / _relative(item["path"]), payload[item["key"]], item.get("mode", default_mode))
        directory.mkdir(parents=True, exist_ok=True)

    def _write_downward(self, directory: Path, items: list[dict[str, Any]], default_mode) -> None:
        default_mode = DEFAULT_MODE if default_mode is None else default_mode
        containers = {c["name"]: c for c in self.pod["spec"].get("containers") or []}
        for item in items:
            if "fieldRef" in item:
                value = field_value(self.pod, item["fieldRef"]["fieldPath"])
            else:
                ref = item["resourceFieldRef"]
                container = containers.get(ref.get("containerName", ""), {})
                value = resource_value(container, ref, self.allocatable)
            _write_file(directory / _relative(item["path"]), value.encode(), item.get("mode", default_mode))
        directory.mkdir(parents=True, exist_ok=True)

    def _write_token(self, token: ProjectedToken) -> None:
        spec: dict[str, Any] = {
            "expirationSeconds": token.expiration_seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod["metadata"]["name"],
                "uid": self.pod["metadata"]["uid"],
            },
        }
        if token.audience:
            spec["audiences"] = [token.audience]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{token.service_account}/token"
        issued_at = time.time()
        response = self.api.request("POST", path, body=request)
        _write_file(token.file, response["status"]["token"].encode(), token.mode)
        token.refresh_at = refresh_time(issued_at, token.expiration_seconds)

    def _claim(self, claim: str) -> Path:
        pvc = self.api.get(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim}")
        if pvc is None:
            raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
        volume_name = pvc.get("spec", {}).get("volumeName")
        if volume_name and pvc.get("status", {}).get("phase") == "Bound":
            pv = self.api.get(f"/api/v1/persistentvolumes/{volume_name}") or {}
            spec = pv.get("spec", {})
            local = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
            if local:
                Path(local).mkdir(parents=True, exist_ok=True)
                return Path(local)
        directory = self.pvc_root / self.namespace / claim
        directory.mkdir(parents=True, exist_ok=True)
        return directory


def host_path_volume(name: str, path: str | Path, namespace: str, claim: str, size: str = "10Gi") -> dict[str, Any]:
    """A PersistentVolume at a local directory, reserved for one claim (whose storageClassName must be "").

    The scheduler places no pod whose claim is unbound and nothing provisions volumes here: create
    this beside a claim and the controller-manager binds them; the agent then uses ``path``.
    """
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim},
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
        },
    }


def _payload(kind: str, obj: dict[str, Any]) -> dict[str, bytes]:
    if kind == "Secret":
        return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    payload = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
    payload.update({key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()})
    return payload


def _host_path(source: dict[str, Any]) -> Path:
    path = Path(source["path"])
    type_ = source.get("type") or ""
    if type_ in ("", "DirectoryOrCreate") and not path.exists():
        path.mkdir(parents=True, exist_ok=True)
    elif type_ == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif type_ == "Directory" and not path.is_dir():
        raise VolumeError(f"hostPath type check failed: {path} is not a directory")
    elif type_ == "File" and not path.is_file():
        raise VolumeError(f"hostPath type check failed: {path} is not a file")
    return path


def _relative(path: str) -> Path:
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts:
        raise VolumeError(f"volume item path {path!r} must be relative and must not contain '..'")
    return Path(relative)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Written beside and renamed into place, so that a reader never sees half a file (tokens are rewritten live)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)
