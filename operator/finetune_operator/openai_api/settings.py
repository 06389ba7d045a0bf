"""The API's configuration: flags, or FINETUNE_OPENAI_* environment variables (the chart sets those).
Validated at start-up; a wrong value stops the server with a message naming the flag."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Literal

from finetune_core.api import format_validation_error
from finetune_core.api.base import DNS_SUBDOMAIN_PATTERN
from finetune_core.api.finetunejob import Template
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "FINETUNE_OPENAI_"


class ApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kubeconfig: str | None = Field(None, description="kubeconfig outside a cluster (default: in-cluster or KUBECONFIG)")
    host: str = Field("0.0.0.0", description="address to listen on")  # noqa: S104 a server in a pod listens on all
    port: int = Field(8443, ge=1, le=65535, description="HTTPS port")
    tls_cert_file: Path = Field(
        description="serving certificate (PEM), e.g. tls.crt of a mounted kubernetes.io/tls Secret"
    )
    tls_key_file: Path = Field(description="its private key (PEM)")
    files_uri: str = Field(
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket/prefix/ of uploaded files; each namespace gets <prefix>/<namespace>/files/",
    )
    files_credentials_dir: Path = Field(
        description="directory of the mounted Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_ENDPOINT_URL, AWS_REGION) for files_uri"
    )
    job_data_secret: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret in each tenant namespace with which jobs read their files (unset: per-job STS credentials)",
    )
    general_data_uri: str | None = Field(
        None,
        pattern=r"^(s3|hf|pvc)://",
        description="general data for the gate's forgetting check (set: gate enforce; unset: gate warn)",
    )
    job_template: Template | None = Field(
        None,
        description="spec.template of every job made through the API, as JSON: where its pods run (nodeSelector, tolerations, priorityClassName...)",
    )
    max_upload_bytes: int = Field(512 << 20, ge=1024, le=8 << 30, description="largest uploaded file")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="largest JSON request body")
    caller_rate: float = Field(5.0, gt=0, description="requests per second per authenticated caller")
    caller_burst: int = Field(30, ge=1, description="burst per caller")
    address_rate: float = Field(
        20.0, gt=0, description="requests per second per client address, before the token is checked"
    )
    address_burst: int = Field(60, ge=1, description="burst per client address")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    def template_spec(self) -> dict:
        """job_template as it goes into spec.template: what the admin set, nothing else."""
        if self.job_template is None:
            return {}
        return self.job_template.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def parse(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ApiSettings:
    """Settings from flags, then the environment; SystemExit(2) with the wrong ones named."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m finetune_operator.openai_api",
        description="OpenAI-compatible fine-tuning API over FineTuneJobs and ModelAdapters. "
        f"Every flag can also be set as {ENV_PREFIX}<NAME>.",
    )
    for name, info in ApiSettings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=info.description)
    args = parser.parse_args(argv)
    values = {}
    for name in ApiSettings.model_fields:
        value = getattr(args, name)
        if value is None:
            value = environ.get(ENV_PREFIX + name.upper()) or None
        if value is not None and name == "job_template":
            try:
                value = json.loads(value)
            except ValueError:
                parser.error(f"--job-template / {ENV_PREFIX}JOB_TEMPLATE: not JSON")
        if value is not None:
            values[name] = value
    try:
        return ApiSettings.model_validate(values)
    except ValidationError as error:
        lines = []
        for line in format_validation_error(error):
            name, _, message = line.partition(": ")
            lines.append(f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}: {message}")
        parser.error("invalid settings:\n  " + "\n  ".join(lines))
        raise  # parser.error exits
