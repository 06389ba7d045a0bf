"""Leader election's rules, as pure functions: who holds a Lease, what acquiring, renewing and releasing
write, and what /readyz answers in each role. The requests themselves run against the real API server in
tests/e2e/test_leader_election.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from finetune_operator.health import Health, Role
from finetune_operator.leader import (
    ElectionConfig,
    LeaderElector,
    LeaseRecord,
    NotLeading,
    changed_at,
    claimed,
    held_by_another,
    identity_of,
    leading_only,
    micro_time,
    next_attempt_in,
    released,
)
from finetune_operator.settings import Settings

NOW = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
LATER = datetime(2026, 12, 6, 12, 0, 2, tzinfo=UTC)


def record(holder: str = "pod-a", duration: int = 15, transitions: int = 0) -> LeaseRecord:
    stamp = micro_time(NOW)
    return LeaseRecord(holder, duration, acquire_time=stamp, renew_time=stamp, transitions=transitions)


def test_a_lease_time_is_a_micro_time():
    assert micro_time(NOW) == "2026-12-06T12:00:00.123456Z"


def test_a_lease_record_round_trips_through_the_spec():
    original = record(transitions=4)
    assert LeaseRecord.of({"spec": original.spec()}) == original


def test_an_empty_lease_spec_has_no_holder():
    assert LeaseRecord.of({"metadata": {"name": "finetune-operator"}}) == LeaseRecord("", 0)


def test_another_holder_holds_the_lease_until_its_duration_passes_unchanged():
    lease = record("pod-a", duration=15)
    assert held_by_another(lease, "pod-b", observed_at=100.0, now=114.9)
    assert not held_by_another(lease, "pod-b", observed_at=100.0, now=115.0)


def test_expiry_counts_from_when_this_replica_saw_the_record_change_not_from_its_timestamps():
    stale_stamps = LeaseRecord("pod-a", 15, renew_time="2000-01-01T00:00:00.000000Z")
    assert held_by_another(stale_stamps, "pod-b", observed_at=100.0, now=101.0)


def test_a_released_lease_is_free_at_once():
    assert not held_by_another(released(record("pod-a"), NOW), "pod-b", observed_at=100.0, now=100.0)


def test_our_own_lease_is_never_held_by_another():
    assert not held_by_another(record("pod-a"), "pod-a", observed_at=100.0, now=100.0)


def test_a_change_seen_on_a_later_look_happened_halfway_since_the_previous_one():
    assert changed_at(previous_look=100.0, seen=102.0, retry_period=2.0) == 101.0


def test_a_change_is_never_placed_more_than_half_a_retry_period_before_it_was_seen():
    assert changed_at(previous_look=100.0, seen=130.0, retry_period=2.0) == 129.0


def test_a_record_seen_on_the_first_look_counts_from_that_look():
    assert changed_at(previous_look=None, seen=100.0, retry_period=2.0) == 100.0


def test_a_standby_tries_again_when_the_lease_runs_out_if_that_is_before_its_next_period():
    assert next_attempt_in(until_expiry=0.5, retry_period=2.0) == pytest.approx(0.51)
    assert next_attempt_in(until_expiry=9.0, retry_period=2.0) == 2.0


def test_a_standby_whose_attempt_failed_on_a_run_out_lease_waits_a_whole_period():
    assert next_attempt_in(until_expiry=0.0, retry_period=2.0) == 2.0


def test_a_new_lease_is_acquired_with_no_transitions():
    lease = claimed(None, "pod-a", 15.0, NOW)
    assert lease == LeaseRecord("pod-a", 15, micro_time(NOW), micro_time(NOW), 0)


def test_renewing_keeps_the_acquire_time_and_the_transitions():
    renewed = claimed(record("pod-a", transitions=3), "pod-a", 15.0, LATER)
    assert renewed.acquire_time == micro_time(NOW)
    assert renewed.renew_time == micro_time(LATER)
    assert renewed.transitions == 3


def test_taking_over_counts_a_transition_and_restarts_the_acquire_time():
    taken = claimed(record("pod-a", transitions=3), "pod-b", 15.0, LATER)
    assert taken.holder == "pod-b"
    assert taken.acquire_time == micro_time(LATER)
    assert taken.transitions == 4


def test_releasing_leaves_no_holder_and_a_one_second_duration():
    gone = released(record("pod-a", transitions=2), LATER)
    assert gone.holder == ""
    assert gone.lease_duration_seconds == 1
    assert gone.transitions == 2
    assert "holderIdentity" in gone.spec() and gone.spec()["holderIdentity"] == ""


def test_the_identity_is_the_pod_name_when_set():
    assert identity_of(Settings(pod_name="finetune-operator-7d9f-abcde")) == "finetune-operator-7d9f-abcde"


def test_two_copies_on_one_host_without_a_pod_name_get_different_identities():
    assert identity_of(Settings()) != identity_of(Settings())


def test_the_election_settings_come_from_the_operator_settings():
    settings = Settings(
        operator_namespace="finetune-system",
        pod_name="op-0",
        leader_election_lease_duration_seconds=30,
        leader_election_renew_deadline_seconds=20,
        leader_election_retry_period_seconds=4,
    )
    assert ElectionConfig.from_settings(settings) == ElectionConfig("finetune-system", "op-0", 30.0, 20.0, 4.0)


def test_no_election_without_a_namespace_for_the_lease():
    assert not Settings().elects_leader
    assert Settings(operator_namespace="finetune-system").elects_leader
    assert not Settings(operator_namespace="finetune-system", leader_election=False).elects_leader


@pytest.mark.parametrize(
    ("role", "started", "ready"),
    [
        (Role.STANDBY, False, True),
        (Role.LEADER, False, False),
        (Role.LEADER, True, True),
        (Role.SINGLE, False, False),
        (Role.SINGLE, True, True),
    ],
)
def test_readiness_is_true_for_a_standby_and_for_a_leader_whose_handlers_started(role, started, ready):
    health = Health()
    health.lead(role)
    if started:
        health.started.set()
    assert health.ready()[0] is ready


def reconcile(context, namespace: str, name: str) -> str:
    return f"reconciled {namespace}/{name}"


def test_a_replica_that_never_renewed_the_lease_refuses_to_reconcile():
    elector = LeaderElector(kube=None, config=ElectionConfig("finetune-system", "op-a", 15.0, 10.0, 2.0))
    with pytest.raises(NotLeading):
        leading_only(reconcile, elector)(None, "team-a", "job")


def test_without_leader_election_reconciles_are_not_fenced():
    assert leading_only(reconcile, None)(None, "team-a", "job") == "reconciled team-a/job"


def test_the_leaders_mark_is_a_label_set_by_a_merge_patch_and_removed_by_a_null():
    from finetune_operator.pod_role import role_patch

    assert role_patch(True) == {"metadata": {"labels": {"finetune.dev/role": "leader"}}}
    assert role_patch(False) == {"metadata": {"labels": {"finetune.dev/role": None}}}


def test_a_missing_pod_is_not_asked_again_but_other_failures_are():
    from finetune_operator.kube import KubeError
    from finetune_operator.pod_role import nothing_to_mark

    assert nothing_to_mark(KubeError(404, "Not Found", ""))
    for status in (0, 403, 409, 429, 500, 503):
        assert not nothing_to_mark(KubeError(status, "x", ""))
