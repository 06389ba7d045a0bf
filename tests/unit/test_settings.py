"""The operator's settings: flags over FINETUNE_* environment variables, validated at start-up."""

from __future__ import annotations

import argparse

import pytest
from finetune_operator.settings import PROGRESS_AUDIENCE, Settings, SettingsError, add_arguments, from_arguments


def settings_from(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv), environ or {})


def error_from(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as raised:
        settings_from(argv, environ)
    return str(raised.value)


def test_no_flags_and_no_environment_give_the_defaults():
    assert settings_from([]) == Settings()


def test_the_defaults_watch_every_namespace_without_an_output_location():
    settings = Settings()
    assert settings.clusterwide
    assert settings.default_output_uri is None
    assert settings.progress_url is None
    assert settings.progress_audience == PROGRESS_AUDIENCE


def test_the_environment_sets_values():
    settings = settings_from([], {"FINETUNE_TRAINER_IMAGE": "example.com/trainer:2", "FINETUNE_METRICS_PORT": "9090"})
    assert settings.trainer_image == "example.com/trainer:2"
    assert settings.metrics_port == 9090


def test_flags_override_the_environment():
    settings = settings_from(["--trainer-image", "flag/image:1"], {"FINETUNE_TRAINER_IMAGE": "env/image:1"})
    assert settings.trainer_image == "flag/image:1"


def test_an_empty_environment_variable_is_ignored():
    assert settings_from([], {"FINETUNE_TRAINER_IMAGE": ""}).trainer_image == Settings().trainer_image


def test_namespaces_from_the_environment_are_comma_separated():
    settings = settings_from([], {"FINETUNE_NAMESPACES": "team-b, team-a,,team-b"})
    assert settings.namespaces == ["team-a", "team-b"]
    assert not settings.clusterwide


def test_the_namespace_flag_is_repeatable_and_replaces_the_environment():
    settings = settings_from(["--namespace", "x", "--namespace", "y"], {"FINETUNE_NAMESPACES": "a,b"})
    assert settings.namespaces == ["x", "y"]


@pytest.mark.parametrize(
    ("argv", "environ", "names"),
    [
        (["--progress-url", "http://operator:8443"], {}, "--progress-url / FINETUNE_PROGRESS_URL"),
        ([], {"FINETUNE_PROGRESS_URL": "http://operator:8443"}, "--progress-url / FINETUNE_PROGRESS_URL"),
        (["--metrics-port", "70000"], {}, "--metrics-port / FINETUNE_METRICS_PORT"),
        ([], {"FINETUNE_RESYNC_SECONDS": "often"}, "--resync-seconds / FINETUNE_RESYNC_SECONDS"),
        (["--log-format", "xml"], {}, "--log-format / FINETUNE_LOG_FORMAT"),
        (["--default-output-uri", "hf://org/x"], {}, "--default-output-uri / FINETUNE_DEFAULT_OUTPUT_URI"),
        (["--termination-grace-seconds", "1"], {}, "--termination-grace-seconds / FINETUNE_TERMINATION_GRACE_SECONDS"),
        (["--progress-tls-secret", "just-a-name"], {}, "--progress-tls-secret / FINETUNE_PROGRESS_TLS_SECRET"),
        (["--metrics-secure", "maybe"], {}, "--metrics-secure / FINETUNE_METRICS_SECURE"),
        ([], {"FINETUNE_TLS_HOSTS": "operator.ns.svc,Not_A_Host"}, "--tls-hosts / FINETUNE_TLS_HOSTS (item 2)"),
    ],
)
def test_a_validation_error_names_the_flag_and_the_environment_variable(argv, environ, names):
    assert f"\n  {names}: " in error_from(argv, environ)


def test_every_invalid_setting_is_reported_at_once():
    message = error_from(["--metrics-port", "-1", "--log-level", "LOUD"])
    assert message.startswith("invalid operator settings:")
    assert "--metrics-port / FINETUNE_METRICS_PORT" in message
    assert "--log-level / FINETUNE_LOG_LEVEL" in message


def test_metrics_are_secure_unless_local_development_asks_otherwise():
    assert Settings().metrics_secure
    assert not settings_from(["--metrics-secure", "false"]).metrics_secure
    assert not settings_from([], {"FINETUNE_METRICS_SECURE": "false"}).metrics_secure


def test_the_services_dns_names_are_comma_separated():
    settings = settings_from([], {"FINETUNE_TLS_HOSTS": "fto.finetune-system.svc, fto.example.com,"})
    assert settings.tls_hosts == ["fto.finetune-system.svc", "fto.example.com"]


@pytest.mark.parametrize("value", ["operator-system/progress-tls", "ns/name"])
def test_the_progress_tls_secret_is_namespace_slash_name(value):
    assert Settings(progress_tls_secret=value).progress_tls_secret == value


@pytest.mark.parametrize("value", ["progress-tls", "a/b/c"])
def test_a_progress_tls_secret_without_exactly_one_slash_is_refused(value):
    assert "must be namespace/name" in error_from(["--progress-tls-secret", value])


@pytest.mark.parametrize("value", ["/progress-tls", "operator-system/"])
def test_a_progress_tls_secret_with_an_empty_part_is_refused(value):
    assert "must be namespace/name" in error_from(["--progress-tls-secret", value])


@pytest.mark.parametrize("uri", ["s3://bucket/prefix", "pvc://claim/path", "file:///data/out"])
def test_the_default_output_uri_accepts_storage_schemes(uri):
    assert settings_from(["--default-output-uri", uri]).default_output_uri == uri


def test_settings_are_frozen():
    with pytest.raises(ValueError):
        Settings().trainer_image = "other"  # type: ignore[misc]


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError):
        Settings(unknown=1)  # type: ignore[call-arg]


def test_verification_pods_are_placed_by_a_node_selector_and_tolerations():
    settings = settings_from(
        ["--verifier-node-selector", "pool=cpu, zone=a", "--verifier-image", "registry.example/finetune-operator:1"],
        {"FINETUNE_VERIFIER_TOLERATIONS": "dedicated=cpu:NoSchedule,spot:NoExecute"},
    )
    assert settings.verifier_node_selector == {"pool": "cpu", "zone": "a"}
    assert settings.verifier_tolerations == [
        {"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert settings.verifier_image == "registry.example/finetune-operator:1"


@pytest.mark.parametrize(
    ("argv", "names", "detail"),
    [
        (
            ["--verifier-node-selector", "pool"],
            "--verifier-node-selector / FINETUNE_VERIFIER_NODE_SELECTOR",
            "key=value",
        ),
        (
            ["--verifier-tolerations", "dedicated=cpu"],
            "--verifier-tolerations / FINETUNE_VERIFIER_TOLERATIONS",
            "Effect",
        ),
        (["--verifier-tolerations", "a:Sometimes"], "--verifier-tolerations / FINETUNE_VERIFIER_TOLERATIONS", "Effect"),
    ],
)
def test_a_malformed_verifier_placement_names_the_flag(argv, names, detail):
    message = error_from(argv)
    assert f"\n  {names}: " in message and detail in message


# -- storage: endpoints and local mode ------------------------------------------------------------


def test_the_s3_endpoints_come_normalised_from_flags_or_the_environment():
    settings = settings_from(
        ["--s3-endpoint=http://MinIO.storage.svc:9000/"],
        {"FINETUNE_ALLOWED_S3_ENDPOINTS": "https://s3.example.com, http://10.0.0.5"},
    )
    assert settings.s3_endpoint == "http://minio.storage.svc:9000"
    assert settings.allowed_endpoints == {
        "http://minio.storage.svc:9000",
        "https://s3.example.com:443",
        "http://10.0.0.5:80",
    }


def test_without_endpoints_only_aws_own_s3_is_allowed():
    assert Settings().allowed_endpoints == frozenset()


@pytest.mark.parametrize("url", ["minio:9000", "ftp://minio", "http://minio/bucket", "http://user:pw@minio"])
def test_an_endpoint_that_is_not_scheme_host_port_is_refused_at_start_up(url):
    assert "--s3-endpoint / FINETUNE_S3_ENDPOINT" in error_from([f"--s3-endpoint={url}"])


def test_local_mode_is_off_unless_asked_for():
    assert not Settings().allow_local_files
    assert settings_from(["--allow-local-files"]).allow_local_files
    assert not settings_from(["--allow-local-files", "false"]).allow_local_files
    assert settings_from([], {"FINETUNE_ALLOW_LOCAL_FILES": "true"}).allow_local_files
    assert not settings_from([], {"FINETUNE_ALLOW_LOCAL_FILES": "false"}).allow_local_files


def test_a_verification_has_five_minutes_by_default_and_at_most_an_hour():
    assert Settings().verification_timeout_seconds == 300
    assert "--verification-timeout-seconds" in error_from(["--verification-timeout-seconds=7200"])


def test_leader_election_defaults_to_client_gos_durations():
    settings = Settings()
    assert settings.leader_election
    assert (
        settings.leader_election_lease_duration_seconds,
        settings.leader_election_renew_deadline_seconds,
        settings.leader_election_retry_period_seconds,
    ) == (15.0, 10.0, 2.0)


def test_leader_election_settings_and_the_pod_name_come_from_the_environment():
    settings = settings_from(
        [],
        {
            "FINETUNE_LEADER_ELECTION_LEASE_DURATION_SECONDS": "30",
            "FINETUNE_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "20",
            "FINETUNE_LEADER_ELECTION_RETRY_PERIOD_SECONDS": "4",
            "FINETUNE_POD_NAME": "finetune-operator-5c7d-x2x9q",
        },
    )
    assert settings.leader_election_lease_duration_seconds == 30.0
    assert settings.leader_election_renew_deadline_seconds == 20.0
    assert settings.leader_election_retry_period_seconds == 4.0
    assert settings.pod_name == "finetune-operator-5c7d-x2x9q"


def test_leader_election_can_be_turned_off():
    assert not settings_from(["--leader-elect=false"]).leader_election
    assert not settings_from([], {"FINETUNE_LEADER_ELECTION": "false"}).leader_election


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["--leader-elect-lease-duration=10", "--leader-elect-renew-deadline=10"], "greater than the renew deadline"),
        (["--leader-elect-lease-duration=12", "--leader-elect-renew-deadline=10"], "plus the retry period"),
        (["--leader-elect-renew-deadline=4", "--leader-elect-retry-period=4"], "1.2 x the retry period"),
        (["--leader-elect-retry-period=0"], "--leader-elect-retry-period"),
    ],
)
def test_leader_election_durations_that_could_overlap_two_leaders_are_refused(argv, detail):
    assert detail in error_from(argv)


@pytest.mark.parametrize("uri", ["s3://bucket//runs", "pvc://claim/../other"])
def test_a_default_output_that_would_leave_its_bucket_or_claim_is_refused_at_start(uri):
    assert "segment" in error_from([f"--default-output-uri={uri}"])


@pytest.mark.parametrize("size", ["1Gi", "150Gi", "0"])
def test_a_cache_limit_that_does_not_fit_below_the_claims_size_is_refused_at_start(size):
    assert "below cache_size" in error_from(
        ["--preflight=true", "--cache=true", f"--cache-size={size}", f"--cache-max-bytes={150 * 2**30}"]
    )


def test_the_default_cache_limit_fits_its_claim():
    assert settings_from(["--preflight=true", "--cache=true"]).cache_max_bytes < 200 * 2**30


def test_a_cache_without_the_preflight_that_fills_it_is_refused_at_start():
    assert "cache needs preflight" in error_from(["--cache=true"])
