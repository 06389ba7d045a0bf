"""Small helpers for e2e tests: kubectl as a user would run it, and patient waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubelet import finished_pod_status

T = TypeVar("T")


def apply(cluster, manifest: dict[str, Any]) -> None:
    cluster.run_kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest))


def get(cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.run_kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def items(cluster, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(cluster.run_kubectl(*args).stdout)["items"]


class Hopeless(AssertionError):
    """Raised by a probe when what is waited for can no longer come: it ends wait_for at once."""


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60.0, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Hopeless:
            raise
        except Exception as error:  # probes may fail while things settle
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return found
    return None


def unless_failed(cluster, namespace: str, name: str) -> dict[str, Any]:
    """The FineTuneJob ``name`` ({} while there is none) for a probe; once it has Failed, nothing a probe waits
    for will come: Hopeless, with the condition."""
    ftj = get(cluster, "ftj", namespace, name) or {}
    failed = condition(ftj, "Failed")
    if failed and failed["status"] == "True":
        raise Hopeless(f"{name} failed: {failed}")
    return ftj


def condition_is(cluster, namespace: str, name: str, type_: str, status: str = "True", kind: str = "ftj"):
    def probe():
        found = condition(get(cluster, kind, namespace, name), type_)
        return found if found and found["status"] == status else None

    return probe


def patch_pod_status(cluster, namespace: str, pod: str, exit_code: int, message: str = "") -> None:
    """Write a pod's final status as its kubelet would."""
    patch = {"status": finished_pod_status("trainer", exit_code, message)}
    cluster.run_kubectl(
        "patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


def claim_on_local_volume(cluster, namespace: str, claim: str, directory, request) -> None:
    """A PersistentVolumeClaim bound to a hostPath volume at ``directory`` (reserved for it; the
    controller-manager binds them); the volume goes when the test ends. The local node's pods see
    ``directory`` as the claim."""
    from hack.nodeagent import host_path_volume

    volume = host_path_volume(f"{namespace}-{claim}", directory, namespace, claim)
    cluster.run_kubectl("create", "-f", "-", input=json.dumps(volume))
    request.addfinalizer(lambda: cluster.run_kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false"))
    manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    apply(cluster, manifest)
