"""A container's environment as the kubelet builds it: envFrom, then env, with $(VAR) references.

Values are pod values here (``/scratch/home``); the caller translates paths afterwards, so that
$(VAR) references see what they would see in a real pod.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from finetune_core.api.quantity import parse_quantity

POD_IP = "127.0.0.1"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_KEYED_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")

# (kind, namespace, name) -> the object, or None when it does not exist.
Lookup = Callable[[str, str, str], dict[str, Any] | None]


class ConfigError(Exception):
    """A reference the pod makes cannot be resolved yet (the kubelet's CreateContainerConfigError)."""


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, anything else stays as written."""
    out: list[str] = []
    checkpoint = cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                advance = 1
            elif following == "(" and (close := text.find(")", cursor + 2)) != -1:
                name = text[cursor + 2 : close]
                out.append(mapping.get(name, f"$({name})"))
                advance = close - cursor
            else:
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def field_value(pod: dict[str, Any], field_path: str) -> str:
    """The downward API's fieldRef: metadata.name, metadata.annotations['key'], status.podIP, ..."""
    metadata, spec = pod["metadata"], pod.get("spec", {})
    if keyed := _KEYED_FIELD.match(field_path):
        return (metadata.get(keyed.group(1)) or {}).get(keyed.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = metadata.get(field_path.split(".")[1]) or {}
        return "".join(f"{key}={_quote(value)}\n" for key, value in sorted(items.items()))
    simple = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if field_path not in simple:
        raise ConfigError(f"fieldRef {field_path!r} is not supported by the node agent")
    return simple[field_path]


def resource_value(container: dict[str, Any], ref: dict[str, Any], allocatable: Mapping[str, str]) -> str:
    """The downward API's resourceFieldRef: limits fall back to the node's allocatable, as in Kubernetes."""
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    quantity = (resources.get(kind) or {}).get(resource)
    if quantity is None and kind == "limits":
        quantity = allocatable.get(resource, "0")
    value = parse_quantity(quantity or "0")
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    if divisor == 0:
        raise ConfigError(f"resourceFieldRef {ref['resource']}: divisor must not be zero")
    return str(math.ceil(value / divisor))


def resolve_env(
    pod: dict[str, Any], container: dict[str, Any], lookup: Lookup, allocatable: Mapping[str, str]
) -> dict[str, str]:
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = source[key]
                data = _data(lookup, kind, namespace, ref["name"], bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in data.items() if _ENV_NAME.match(prefix + k)})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        value = _value_from(pod, container, var["valueFrom"], lookup, allocatable, namespace)
        if value is not None:
            env[name] = value
    return env


def _value_from(pod, container, source, lookup, allocatable, namespace) -> str | None:
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"], allocatable)
    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if key in source:
            ref = source[key]
            optional = bool(ref.get("optional"))
            data = _data(lookup, kind, namespace, ref["name"], optional)
            if ref["key"] in data:
                return data[ref["key"]]
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    raise ConfigError(f"env valueFrom {sorted(source)} is not supported by the node agent")


def _data(lookup: Lookup, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
    found = lookup(kind, namespace, name)
    if found is None:
        if optional:
            return {}
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    return object_data(kind, found)


def object_data(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's data decoded, as text."""
    if kind == "Secret":
        return {key: base64.b64decode(value).decode(errors="replace") for key, value in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
