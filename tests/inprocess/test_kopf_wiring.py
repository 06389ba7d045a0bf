"""How handlers.py configures kopf for the operator's caches and connection: what its watches ask the API
server for and with which credentials. That the watches then deliver (and only) the operator's objects is
the e2e tier's (tests/e2e/test_watch_scope.py)."""

from __future__ import annotations

import kopf
from finetune_operator.handlers import configure_kopf, connection_info
from finetune_operator.kube import CONFIGMAPS, FINETUNEJOBS, JOBS, PODS, SERVICEACCOUNTS, SERVICES


def test_every_watch_of_a_kind_not_the_operators_own_carries_its_caches_label_selector(harness):
    settings = kopf.OperatorSettings()

    configure_kopf(settings, harness.context.caches)

    selectors = settings.watching.label_selectors
    for kind in (JOBS, PODS, SERVICES, CONFIGMAPS, SERVICEACCOUNTS):
        assert selectors[kind.group, kind.version, kind.plural] == harness.context.caches.selectors()[kind]
    assert (FINETUNEJOBS.group, FINETUNEJOBS.version, FINETUNEJOBS.plural) not in selectors
    assert selectors[JOBS.group, JOBS.version, JOBS.plural] == "app.kubernetes.io/managed-by=finetune-operator"
    # Nothing of kopf's own reaches the users' objects or the cluster's event stream.
    assert settings.posting.enabled is False and settings.scanning.disabled is True
    assert settings.persistence.finalizer == "finetune.dev/kopf-finalizer"
    assert settings.watching.chunk_size == 500


def test_kopf_logs_in_with_the_operators_own_credentials(harness):
    connection = harness.context.kube.rest.connection

    info = connection_info(connection)

    assert info.server == harness.cluster.server
    assert info.scheme == "Bearer" and info.token == harness.cluster.admin_token
    assert info.ca_data == connection.ca_pem and info.insecure == connection.insecure
