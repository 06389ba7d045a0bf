"""Which S3 endpoints the operator may send a request to.

A ModelAdapter's Secret names its store's endpoint (AWS_ENDPOINT_URL). Left open, that would make
the operator send requests, signed or not, to any address it can reach on a tenant's behalf (a
confused deputy). So an endpoint must be one the platform admin configured: the platform's own
store (--s3-endpoint) or one of --allowed-s3-endpoints. No endpoint at all means AWS's own S3.

Endpoints are compared normalised, as scheme://host:port, so that http://MinIO:80/ and
http://minio are the same endpoint and http://minio.evil.example is not.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointInvalid(ValueError):
    pass


def normalise_endpoint(url: str) -> str:
    """scheme://host:port of an endpoint URL; EndpointInvalid (without echoing it) when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise EndpointInvalid("is not a URL") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise EndpointInvalid("must start with http:// or https://")
    if not parts.hostname:
        raise EndpointInvalid("has no host")
    if parts.username is not None or parts.password is not None:
        raise EndpointInvalid("must not carry a user or password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise EndpointInvalid("must be scheme://host[:port], without a path, query or fragment")
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORTS[parts.scheme]}"


def endpoint_problem(url: str | None, allowed: frozenset[str]) -> str | None:
    """Why the operator must not use ``url`` (None: it may). ``allowed`` holds normalised endpoints."""
    if url is None:
        return None  # AWS's own S3
    try:
        endpoint = normalise_endpoint(url)
    except EndpointInvalid as error:
        return f"AWS_ENDPOINT_URL {error}"
    if endpoint not in allowed:
        endpoint = endpoint if len(endpoint) <= 256 else endpoint[:256] + "..."
        if not allowed:
            return f"AWS_ENDPOINT_URL {endpoint} is not allowed: this operator reads only AWS's own S3"
        return f"AWS_ENDPOINT_URL {endpoint} is not allowed; allowed: {', '.join(sorted(allowed))}"
    return None
