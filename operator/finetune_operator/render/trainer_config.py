"""Resolve a FineTuneJob into the trainer's configuration: every default that depends on other
fields or on the operator's settings is decided here, once."""

from __future__ import annotations

from finetune_core.api import EvalData, FineTuneJob, LoraSettings, ProgressEndpoint, TrainerConfig, TrainerOutput
from finetune_core.api.trainer import JobIdentity

from ..settings import Settings
from . import paths

DEFAULT_LEARNING_RATE = {"lora": 1e-4, "qlora": 1e-4, "full": 1e-5}
DEFAULT_EVAL_SPLIT = 0.05


class ResolutionError(ValueError):
    """The job cannot be turned into a trainer configuration; ``field`` says what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def adapter_name(job: FineTuneJob) -> str:
    return job.spec.adapter.name or job.metadata.name


def artifact_version(job: FineTuneJob) -> str:
    """A version per job, fixed at creation: its creation time (readable, sortable) and part of its UID."""
    stamp = (job.metadata.creation_timestamp or "").replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    uid = (job.metadata.uid or "").replace("-", "")[:6]
    return "-".join(part for part in (stamp, uid) if part) or "v1"


def output_uri(job: FineTuneJob, settings: Settings) -> str:
    uri = job.spec.output.uri or settings.default_output_uri
    if not uri:
        raise ResolutionError(
            "spec.output.uri",
            "no output location: set spec.output.uri (s3://bucket/prefix/ or pvc://claim/path) or configure the "
            "operator's default output location",
        )
    return uri.rstrip("/")


def output_secret(job: FineTuneJob, settings: Settings) -> str | None:
    if job.spec.output.credentials_secret_ref is not None:
        return job.spec.output.credentials_secret_ref.name
    if job.spec.output.uri is None:
        return settings.default_output_secret
    return None


def served_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].lower()


def resolve_trainer_config(
    job: FineTuneJob, settings: Settings, progress_ca: bool = False, model_revision: str | None = None
) -> TrainerConfig:
    """``model_revision``: the commit the preflight resolved spec.model.revision to (status.plan): the training
    pods load that one, not whatever the branch points at by the time they start."""
    spec = job.spec
    namespace = job.metadata.namespace or "default"
    prefix = output_uri(job, settings)
    name = adapter_name(job)
    version = artifact_version(job)

    method = spec.method
    if method.type in ("lora", "qlora") and method.lora is None:
        method = method.model_copy(update={"lora": LoraSettings()})

    training = spec.training.model_copy(
        update={
            "learning_rate": spec.training.learning_rate or DEFAULT_LEARNING_RATE[method.type],
            "epochs": spec.training.epochs if (spec.training.epochs or spec.training.max_steps) else 1.0,
        }
    )
    data = (
        spec.data
        if spec.data.eval
        else spec.data.model_copy(update={"eval": EvalData(split_fraction=DEFAULT_EVAL_SPLIT)})
    )
    # A catalog name left unresolved (a bug) has no uri: TrainerConfig then refuses it by its rule.
    default_name = served_name(spec.model.uri) if spec.model.uri else None
    model = spec.model.model_copy(
        update={
            "served_name": spec.model.served_name or default_name,
            "revision": model_revision or spec.model.revision,
        }
    )

    progress = None
    if settings.progress_url:
        progress = ProgressEndpoint(
            url=f"{settings.progress_url.rstrip('/')}/v1/namespaces/{namespace}/finetunejobs/{job.metadata.name}/progress",
            ca_file=paths.PROGRESS_CA_FILE if progress_ca else None,
            token_file=paths.PROGRESS_TOKEN_FILE,
        )

    return TrainerConfig(
        job=JobIdentity(namespace=namespace, name=job.metadata.name, uid=job.metadata.uid or ""),
        model=model,
        method=method,
        objective=spec.objective,
        data=data,
        training=training,
        evaluation=spec.evaluation,
        output=TrainerOutput(
            # Per job instance: a job deleted and created again under the same name starts afresh
            # instead of resuming the old one's checkpoints.
            checkpoints_uri=f"{prefix}/{namespace}/{job.metadata.name}/checkpoints/{version}/",
            artifact_uri=f"{prefix}/{namespace}/{name}/{version}/",
            adapter_name=name,
            version=version,
        ),
        progress=progress,
    )
