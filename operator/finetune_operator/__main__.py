"""finetune-operator: run the operator (``python -m finetune_operator`` or ``finetune-operator``)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import logs
from .settings import SettingsError, add_arguments, from_arguments

log = logging.getLogger("finetune_operator")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Kubernetes operator for fine-tuning LLMs: reconciles FineTuneJobs into training Jobs "
        "and publishes ModelAdapters. Every flag can also be set by the environment variable shown.",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig outside a cluster (default: KUBECONFIG)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent reconciles")
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        settings = from_arguments(args)
    except SettingsError as error:
        print(f"finetune-operator: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)

    import kopf

    from .adapters.reconcile import reconcile_adapter
    from .context import Context
    from .controller import Controller, job_metrics_recorder
    from .handlers import build_registry
    from .kube import FINETUNEJOBS, MODELADAPTERS, Kube, load_api_client
    from .metrics import OperatorMetrics
    from .reconcile import reconcile, settled_job

    context = Context(kube=Kube(load_api_client(args.kubeconfig)), settings=settings)
    metrics = OperatorMetrics()
    jobs = Controller(
        "finetunejob",
        FINETUNEJOBS,
        reconcile,
        context,
        metrics,
        args.workers,
        job_metrics_recorder(metrics),
        settled=settled_job,
    )
    adapters = Controller("modeladapter", MODELADAPTERS, reconcile_adapter, context, metrics, workers=2)
    registry = build_registry(jobs, adapters)
    log.info(
        "watching %s", "all namespaces" if settings.clusterwide else "namespaces " + ", ".join(settings.namespaces)
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
