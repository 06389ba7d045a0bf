"""The HTTPS server: OpenAI's routes for files, fine-tuning jobs and models, each a short handler that checks
the caller (access), reads or writes through the Kubernetes API or the file store, and answers with what the
pure modules map. Blocking calls run in threads.

Every request is checked in the order of what the check costs: the client address's budget, the body's
size, the token (a TokenReview, remembered briefly), the caller's budget, the caller's RBAC in the namespace
(a SubjectAccessReview, remembered briefly), and only then is the body read or the store touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from finetune_core.api import FineTuneModel
from finetune_core.api.base import DNS_SUBDOMAIN_PATTERN

from ..context import utc_now
from ..kube import FINETUNEJOBS, FINETUNEMODELS, MODELADAPTERS, NAMESPACES, Kube, KubeError
from ..tokens import bearer_token
from . import datafiles
from .access import Access, Caller
from .admission import catalog_entry, check_job, hints, model_not_found, usable
from .errors import ApiError, invalid, length_required, not_found, too_large, unauthenticated, unavailable
from .events import job_checkpoints, job_events
from .files import FILE_ID_PATTERN, StoredFile, file_object, new_file_id, safe_filename
from .filestore import FileStore, StoreFailed
from .jobs import (
    CANCELLED_AT,
    JobPolicy,
    job_manifest,
    job_object,
    job_status,
    metadata_matches,
    new_job_name,
    parse_job_request,
)
from .models import adapter_model_object, catalog_model_object, is_ready, models_list
from .paging import metadata_filter, page, page_request
from .params import only_known
from .settings import ApiSettings

log = logging.getLogger(__name__)

_OBJECT_NAME = re.compile(DNS_SUBDOMAIN_PATTERN)
TERMINAL = ("succeeded", "failed", "cancelled")
UPLOAD_CHUNK = 1 << 16

Handler = Callable[[web.Request, "Service", Caller, str], Awaitable[Any]]


def is_object_name(value: str) -> bool:
    return len(value) <= 253 and _OBJECT_NAME.fullmatch(value) is not None


class Service:
    """What the handlers share: the clients, the limits, the admin's policy."""

    def __init__(self, settings: ApiSettings, kube: Kube, store: FileStore):
        self.settings = settings
        self.kube = kube
        self.store = store
        self.access = Access(
            kube, settings.caller_rate, settings.caller_burst, settings.address_rate, settings.address_burst
        )
        self.policy = JobPolicy(settings.job_data_secret, settings.general_data_uri, settings.template_spec())

    # -- reads of our objects -----------------------------------------------------------------

    def job(self, namespace: str, job_id: str) -> dict[str, Any]:
        found = self.kube.get(FINETUNEJOBS, namespace, job_id) if is_object_name(job_id) else None
        if found is None:
            raise not_found("Fine-tuning job", "fine_tuning_job_id")
        return found

    def file(self, namespace: str, file_id: str) -> StoredFile:
        found = self.store.find(namespace, file_id) if FILE_ID_PATTERN.fullmatch(file_id) else None
        if found is None:
            raise not_found("File", "file_id")
        return found

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return ((self.kube.get(NAMESPACES, None, namespace) or {}).get("metadata") or {}).get("labels") or {}

    def usable_model(self, namespace: str, name: str) -> tuple[FineTuneModel, dict[str, str]]:
        """The FineTuneModel ``name`` and the namespace's labels, when it may use it; one 404 for absent and
        not allowed (a caller learns nothing about models it may not use)."""
        entry = catalog_entry(self.kube.get(FINETUNEMODELS, None, name)) if is_object_name(name) else None
        labels = self.namespace_labels(namespace) if entry is not None else {}
        if not usable(entry, namespace, labels):
            raise model_not_found()
        return entry, labels


async def require(
    service: Service, caller: Caller, namespace: str, verb: str, resource: str, hidden: ApiError | None = None
) -> None:
    """access.require off the event loop (a SubjectAccessReview is a request to the API server)."""
    await asyncio.to_thread(service.access.require, caller, namespace, verb, resource, hidden)


# ---------------------------------------------------------------------------------------------
# files


def _bounded_lines(handle: IO[bytes]) -> Iterator[bytes]:
    """Lines of at most MAX_LINE_BYTES + 1 bytes each: a longer one is refused, never held whole."""
    while line := handle.readline(datafiles.MAX_LINE_BYTES + 1):
        yield line


def _check_and_store(service: Service, namespace: str, spooled: Path, filename: str) -> dict[str, Any]:
    check = datafiles.FileCheck()
    checked = spooled.with_suffix(".checked")
    with spooled.open("rb") as source, checked.open("wb") as target:
        for line in datafiles.checked_lines(_bounded_lines(source), check):
            target.write(line)
    # checked_lines refuses a file without examples, so its kind is known here.
    stored = service.store.put(namespace, new_file_id(), str(check.kind), filename, checked)
    return file_object(stored)


async def upload_file(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "create", "finetunejobs")
    if not request.content_type.startswith("multipart/"):
        raise invalid("Upload the file as multipart/form-data with the fields purpose and file", "file")
    reader = await request.multipart()
    purpose, filename = None, None
    with tempfile.TemporaryDirectory(prefix="openai-upload-") as directory:
        spooled = Path(directory) / "upload"
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.read_chunk(64)).decode(errors="replace")  # only "fine-tune" is wanted
            elif part.name == "file":
                filename = safe_filename(part.filename)
                size = 0
                with spooled.open("wb") as target:
                    while chunk := await part.read_chunk(UPLOAD_CHUNK):
                        size += len(chunk)
                        if size > service.settings.max_upload_bytes:
                            raise too_large(service.settings.max_upload_bytes, "file")
                        target.write(chunk)
            else:
                only_known({part.name or "": None}, ("purpose", "file"))
        if purpose != "fine-tune":
            raise invalid("purpose must be fine-tune: this API stores fine-tuning files only", "purpose")
        if filename is None:
            raise invalid("The file field is missing", "file")
        return await asyncio.to_thread(_check_and_store, service, namespace, spooled, filename)


async def list_files(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "list", "finetunejobs")
    after, limit = page_request(request.query, extra=("purpose", "order"))
    purpose = request.query.get("purpose")
    stored = await asyncio.to_thread(service.store.list, namespace)
    files = [file_object(f) for f in stored] if purpose in (None, "fine-tune") else []
    if request.query.get("order") == "asc":
        files.reverse()
    return page(files, after, limit)


async def retrieve_file(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "finetunejobs", not_found("File", "file_id"))
    return file_object(await asyncio.to_thread(service.file, namespace, request.match_info["file_id"]))


async def file_content(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "finetunejobs", not_found("File", "file_id"))
    stored = await asyncio.to_thread(service.file, namespace, request.match_info["file_id"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = stored.bytes
    await response.prepare(request)
    chunks = service.store.chunks(stored)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_file(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "delete", "finetunejobs", not_found("File", "file_id"))
    stored = await asyncio.to_thread(service.file, namespace, request.match_info["file_id"])
    await asyncio.to_thread(service.store.delete, stored)
    return {"id": stored.id, "object": "file", "deleted": True}


# ---------------------------------------------------------------------------------------------
# fine-tuning jobs


async def _json_body(request: web.Request, service: Service) -> Any:
    body = await request.content.read(service.settings.max_body_bytes + 1)
    if len(body) > service.settings.max_body_bytes:
        raise too_large(service.settings.max_body_bytes)
    try:
        return json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise invalid("The body is not valid JSON") from None


def _create_job(service: Service, namespace: str, body: Any) -> dict[str, Any]:
    job_request = parse_job_request(body)
    entry, labels = service.usable_model(namespace, job_request.model)
    uris = {}
    for param, file_id in (
        ("training_file", job_request.training_file),
        ("validation_file", job_request.validation_file),
    ):
        if file_id is None:
            continue
        stored = service.store.find(namespace, file_id)
        if stored is None:
            raise invalid(f"{param}: no such file in this project", param, "file_not_found")
        if stored.kind != job_request.data_kind:
            raise invalid(
                f"{param} holds {stored.kind} examples; method {job_request.method} needs {job_request.data_kind} "
                "examples",
                param,
                "invalid_file_format",
            )
        uris[param] = service.store.uri_of(stored)
    manifest = job_manifest(
        job_request,
        namespace,
        new_job_name(),
        uris["training_file"],
        uris.get("validation_file"),
        hints(entry),
        service.policy,
    )
    check_job(manifest, entry, namespace, labels)
    try:
        created, _ = service.kube.create(manifest)
    except KubeError as error:
        if error.status == 422:  # the CRD's own validation (its CEL rules): say which rule, in its words
            raise invalid(f"The job was refused: {_status_message(error)}", "model", "invalid_job") from None
        raise
    return job_object(created, int(time.time()))


def _status_message(error: KubeError) -> str:
    try:
        return str(json.loads(error.body).get("message", ""))[:1024]
    except ValueError:
        return "the API server refused it"


async def create_job(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "create", "finetunejobs")
    body = await _json_body(request, service)
    return await asyncio.to_thread(_create_job, service, namespace, body)


async def list_jobs(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "list", "finetunejobs")
    after, limit = page_request(request.query)
    wanted = metadata_filter(request.query)
    found = await asyncio.to_thread(service.kube.list, FINETUNEJOBS, namespace)
    now = int(time.time())
    jobs = [job_object(item, now) for item in found]
    jobs = [job for job in jobs if metadata_matches(job, wanted)]
    jobs.sort(key=lambda job: (job["created_at"], job["id"]), reverse=True)
    return page(jobs, after, limit)


def _job_not_found() -> ApiError:
    return not_found("Fine-tuning job", "fine_tuning_job_id")


async def retrieve_job(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "finetunejobs", _job_not_found())
    found = await asyncio.to_thread(service.job, namespace, request.match_info["job_id"])
    return job_object(found, int(time.time()))


def _change_job(service: Service, namespace: str, job_id: str, action: str) -> dict[str, Any]:
    found = service.job(namespace, job_id)
    state = job_status(found)
    if state in TERMINAL or (action == "pause" and (found.get("spec") or {}).get("suspend")):
        raise invalid(
            f"The job is {'paused' if state not in TERMINAL else state}: it cannot be {action}d now",
            "fine_tuning_job_id",
            "invalid_state",
        )
    if action == "resume" and not (found.get("spec") or {}).get("suspend"):
        raise invalid("The job is not paused: there is nothing to resume", "fine_tuning_job_id", "invalid_state")
    patch: dict[str, Any] = {"spec": {"suspend": action != "resume"}}
    if action == "cancel":
        # Suspending stops the pods; the annotation makes it final here (resume refuses a cancelled job).
        patch["metadata"] = {"annotations": {CANCELLED_AT: utc_now()}}
    changed = service.kube.merge_patch(FINETUNEJOBS, namespace, found["metadata"]["name"], patch)
    return job_object(changed, int(time.time()))


def job_action(action: str) -> Handler:
    async def handle(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
        await require(service, caller, namespace, "get", "finetunejobs", _job_not_found())
        await require(service, caller, namespace, "patch", "finetunejobs")
        return await asyncio.to_thread(_change_job, service, namespace, request.match_info["job_id"], action)

    return handle


async def job_events_page(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "finetunejobs", _job_not_found())
    after, limit = page_request(request.query)
    found = await asyncio.to_thread(service.job, namespace, request.match_info["job_id"])
    return page(job_events(found), after, limit)


async def job_checkpoints_page(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "finetunejobs", _job_not_found())
    after, limit = page_request(request.query)
    found = await asyncio.to_thread(service.job, namespace, request.match_info["job_id"])
    return page(job_checkpoints(found), after, limit)


# ---------------------------------------------------------------------------------------------
# models


def _list_models(service: Service, namespace: str) -> dict[str, Any]:
    catalog = service.kube.list(FINETUNEMODELS)
    adapters = service.kube.list(MODELADAPTERS, namespace)
    return models_list(catalog, adapters, namespace, service.namespace_labels(namespace))


async def list_models(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "list", "modeladapters")
    return await asyncio.to_thread(_list_models, service, namespace)


def _retrieve_model(service: Service, namespace: str, model_id: str) -> dict[str, Any]:
    if not is_object_name(model_id):
        raise model_not_found()
    adapter = service.kube.get(MODELADAPTERS, namespace, model_id)
    if adapter is not None and is_ready(adapter):
        return adapter_model_object(adapter)
    entry, _ = service.usable_model(namespace, model_id)
    return catalog_model_object(entry.to_api())


async def retrieve_model(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "get", "modeladapters", model_not_found())
    return await asyncio.to_thread(_retrieve_model, service, namespace, request.match_info["model"])


def _delete_model(service: Service, namespace: str, model_id: str) -> dict[str, Any]:
    if not is_object_name(model_id) or not service.kube.delete(MODELADAPTERS, namespace, model_id):
        raise model_not_found()
    return {"id": model_id, "object": "model", "deleted": True}


async def delete_model(request: web.Request, service: Service, caller: Caller, namespace: str) -> Any:
    await require(service, caller, namespace, "delete", "modeladapters", model_not_found())
    return await asyncio.to_thread(_delete_model, service, namespace, request.match_info["model"])


# ---------------------------------------------------------------------------------------------
# the app


def error_response(error: ApiError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="finetune-openai"'} if error.status == 401 else None
    return web.json_response(error.body(), status=error.status, headers=headers)


def endpoint(service: Service, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            if not service.access.addresses.allow(request.remote):
                raise ApiError(
                    429, "Too many requests from this address: retry later", "requests", "rate_limit_exceeded"
                )
            upload = request.path == "/v1/files"
            limit = service.settings.max_upload_bytes + (1 << 20) if upload else service.settings.max_body_bytes
            if upload and request.method == "POST" and request.content_length is None:
                # aiohttp bounds no streamed multipart body (a part's unread rest, a second file part, the
                # preamble): only a declared length, checked here and kept to by the parser, bounds a chunked one.
                raise length_required()
            if (request.content_length or 0) > limit:
                raise too_large(limit)
            token = bearer_token(request.headers.get("Authorization", ""))
            if token is None:
                raise unauthenticated()
            caller = await asyncio.to_thread(service.access.authenticate, token)
            namespace = caller.namespace(request.headers.get("OpenAI-Project"))
            answer = await handler(request, service, caller, namespace)
        except ApiError as error:
            return error_response(error)
        except (KubeError, StoreFailed) as error:
            log.warning("%s %s: %s", request.method, request.path if len(request.path) < 200 else "(long path)", error)
            return error_response(unavailable())
        except Exception:  # a bug: the SDKs still get an error object, the log the traceback
            log.exception("%s %s failed", request.method, request.path if len(request.path) < 200 else "(long path)")
            return error_response(ApiError(500, "The server failed: retry later", "server_error", "internal_error"))
        if isinstance(answer, web.StreamResponse):
            return answer
        return web.json_response(answer)

    return serve


def build_app(service: Service) -> web.Application:
    # aiohttp's own limit stops any body larger than an upload; each route enforces its own below that.
    app = web.Application(client_max_size=service.settings.max_upload_bytes + (1 << 20))
    routes = [
        ("POST", "/v1/files", upload_file),
        ("GET", "/v1/files", list_files),
        ("GET", "/v1/files/{file_id}", retrieve_file),
        ("GET", "/v1/files/{file_id}/content", file_content),
        ("DELETE", "/v1/files/{file_id}", delete_file),
        ("POST", "/v1/fine_tuning/jobs", create_job),
        ("GET", "/v1/fine_tuning/jobs", list_jobs),
        ("GET", "/v1/fine_tuning/jobs/{job_id}", retrieve_job),
        ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", job_action("cancel")),
        ("POST", "/v1/fine_tuning/jobs/{job_id}/pause", job_action("pause")),
        ("POST", "/v1/fine_tuning/jobs/{job_id}/resume", job_action("resume")),
        ("GET", "/v1/fine_tuning/jobs/{job_id}/events", job_events_page),
        ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", job_checkpoints_page),
        ("GET", "/v1/models", list_models),
        ("GET", "/v1/models/{model}", retrieve_model),
        ("DELETE", "/v1/models/{model}", delete_model),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, endpoint(service, handler))

    async def unknown(request: web.Request) -> web.Response:
        return error_response(
            ApiError(
                404,
                "Unknown URL: this API serves /v1/files, /v1/fine_tuning/jobs and /v1/models",
                "invalid_request_error",
                "unknown_url",
            )
        )

    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
