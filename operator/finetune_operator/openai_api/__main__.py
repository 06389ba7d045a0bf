"""python -m finetune_operator.openai_api: the OpenAI-compatible fine-tuning API, over HTTPS."""

from __future__ import annotations

import ssl
import sys

from aiohttp import web

from .. import logs
from ..kube import Kube
from .filestore import FileStore, read_credentials
from .server import Service, build_app
from .settings import parse


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    logs.configure(settings.log_format, settings.log_level)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    store = FileStore(settings.files_uri, read_credentials(settings.files_credentials_dir))
    service = Service(settings, Kube.connect(settings.kubeconfig), store)
    web.run_app(build_app(service), host=settings.host, port=settings.port, ssl_context=context, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
