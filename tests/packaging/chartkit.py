"""The chart as tests see it: helm and kubeconform from the binary cache, rendering with values, and the
JSON schemas kubeconform validates against, made here without a network.

kubeconform downloads its schemas from GitHub by default. Here they come from the OpenAPI document
of the very Kubernetes release the test control plane runs (api/openapi-spec/swagger.json of the
k8s.io/kubernetes module that hack/build-binaries.sh builds the control plane from), converted the
way kubeconform's own openapi2jsonschema does it: one standalone file per kind, strict (no property
the API does not define), IntOrString as string-or-integer. Quantities also accept numbers, as the
API server does. prometheus-operator's kinds, whose CRDs are not ours to ship, are validated against
the hand-written subset schemas in tests/packaging/schemas/ (the fields this chart uses, strict).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from hack.localcluster import build_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
MONITORING_SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE = "fto"
RELEASE_NAMESPACE = "finetune-system"


def pinned_version(name: str) -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value.split("#", 1)[0].strip()
    raise KeyError(name)


KUBERNETES_VERSION = pinned_version("KUBERNETES_VERSION")


class Tools:
    def __init__(self) -> None:
        dirs = build_binaries("helm", "kubeconform")
        self.helm = str(dirs["helm"] / "helm")
        self.kubeconform = str(dirs["kubeconform"] / "kubeconform")

    def run_helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.helm, *args], capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def template(
        self, values: dict[str, Any] | None = None, *extra: str, namespace: str = RELEASE_NAMESPACE, chart: Path = CHART
    ) -> str:
        """``helm template`` with ``values`` (as a values file, so types survive) for the control plane's version."""
        args = ["template", RELEASE, str(chart), "--namespace", namespace, f"--kube-version={KUBERNETES_VERSION}"]
        if values:
            args += ["--values", "-"]
        result = subprocess.run(
            [self.helm, *args, *extra], input=json.dumps(values or {}), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise AssertionError(f"helm template failed:\n{result.stderr}")
        return result.stdout

    def render(self, values: dict[str, Any] | None = None, *extra: str, namespace: str = RELEASE_NAMESPACE):
        return [doc for doc in yaml.safe_load_all(self.template(values, *extra, namespace=namespace)) if doc]


# -- schemas ---------------------------------------------------------------------------------------


def kubernetes_openapi() -> dict[str, Any]:
    """swagger.json of the pinned Kubernetes release, from the Go module cache (downloaded if absent)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")},
    )
    if result.returncode != 0:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{KUBERNETES_VERSION} failed:\n{result.stderr}")
    directory = Path(json.loads(result.stdout)["Dir"])
    return json.loads((directory / "api" / "openapi-spec" / "swagger.json").read_text())


def kind_suffix(api_version: str) -> str:
    """kubeconform's file name suffix: -<first label of the group>-<version>, or -<version> for core."""
    group, _, version = api_version.rpartition("/")
    return f"-{group.split('.')[0]}-{version}".lower() if group else f"-{version}".lower()


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        result = {key: _strict(value) for key, value in node.items()}
        if "properties" in result and "additionalProperties" not in result:
            result["additionalProperties"] = False
        return result
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def _references(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.removeprefix("#/definitions/"))
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for item in node:
            _references(item, found)


def write_schemas(openapi: dict[str, Any], kinds: set[tuple[str, str]], out: Path) -> Path:
    """Strict standalone schemas for (apiVersion, kind) pairs, in kubeconform's layout under ``out``."""
    definitions = openapi["definitions"]
    by_kind: dict[tuple[str, str], str] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            by_kind.setdefault((api_version, gvk["kind"]), name)
    directory = out / f"v{KUBERNETES_VERSION.lstrip('v')}-standalone-strict"
    directory.mkdir(parents=True, exist_ok=True)
    for api_version, kind in sorted(kinds):
        name = by_kind.get((api_version, kind))
        if name is None:
            continue  # not a built-in kind: kubeconform says so unless another location has it
        closure: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current in closure:
                continue
            closure.add(current)
            found: set[str] = set()
            _references(definitions[current], found)
            pending.extend(found - closure)
        local = {ref: _strict(copy.deepcopy(definitions[ref])) for ref in sorted(closure)}
        quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
        if quantity in local:
            local[quantity] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
        schema = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            **local[name],
            "definitions": local,
        }
        (directory / f"{kind.lower()}{kind_suffix(api_version)}.json").write_text(json.dumps(schema))
    return out


def kubeconform(tools: Tools, manifests: str, schemas: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            tools.kubeconform,
            "-strict",
            "-summary",
            "-output=text",
            f"-kubernetes-version={KUBERNETES_VERSION.lstrip('v')}",
            f"-schema-location={schemas}",
            f"-schema-location={MONITORING_SCHEMAS}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
    )


# -- the operator's RBAC, as files/operator-rbac.yaml declares it ----------------------------------


def operator_rbac() -> list[dict[str, Any]]:
    return yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())["rules"]


def is_planned(reason: str) -> bool:
    return reason.startswith("planned")
