"""set_condition: one condition per type, the transition time kept while the status stays the same."""

from __future__ import annotations

from finetune_core.api import Condition
from finetune_operator.status.conditions import Change, get_condition, is_true, net_changes, set_condition

T0 = "2025-03-04T10:00:00Z"
T1 = "2025-03-04T11:00:00Z"


def running(status: str = "True", reason: str = "PodsRunning", message: str = "1 of 1 running") -> Condition:
    return Condition(
        type="Running", status=status, reason=reason, message=message, last_transition_time=T0, observed_generation=1
    )


def test_a_new_condition_is_appended_and_reported_as_a_change_from_nothing():
    conditions: list[Condition] = []
    change = set_condition(conditions, "Running", "True", "PodsRunning", "running", T0, 3)
    assert conditions == [
        Condition(
            type="Running",
            status="True",
            reason="PodsRunning",
            message="running",
            last_transition_time=T0,
            observed_generation=3,
        )
    ]
    assert change == Change(conditions[0], None)


def test_the_same_status_and_reason_is_no_change_and_keeps_the_transition_time():
    conditions = [running()]
    assert set_condition(conditions, "Running", "True", "PodsRunning", "1 of 1 running", T1, 1) is None
    assert conditions[0].last_transition_time == T0


def test_a_new_message_is_stored_without_a_change():
    conditions = [running()]
    assert set_condition(conditions, "Running", "True", "PodsRunning", "2 of 2 running", T1, 1) is None
    assert conditions[0].message == "2 of 2 running"
    assert conditions[0].last_transition_time == T0


def test_a_new_generation_is_stored_without_a_change():
    conditions = [running()]
    assert set_condition(conditions, "Running", "True", "PodsRunning", "1 of 1 running", T1, 2) is None
    assert conditions[0].observed_generation == 2


def test_a_new_status_is_a_change_with_a_new_transition_time():
    conditions = [running()]
    change = set_condition(conditions, "Running", "False", "Suspended", "suspended", T1, 1)
    assert change is not None
    assert change.previous_status == "True"
    assert change.condition == conditions[0]
    assert conditions[0].status == "False"
    assert conditions[0].last_transition_time == T1


def test_a_new_reason_with_the_same_status_is_a_change_that_keeps_the_transition_time():
    conditions = [running(status="False", reason="PodsPending")]
    change = set_condition(conditions, "Running", "False", "Unschedulable", "no GPUs", T1, 1)
    assert change is not None
    assert change.previous_status == "False"
    assert conditions[0].reason == "Unschedulable"
    assert conditions[0].last_transition_time == T0


def test_other_conditions_are_left_alone_and_order_is_kept():
    created = Condition(type="Created", status="True", reason="JobCreated", message="", last_transition_time=T0)
    conditions = [created, running()]
    set_condition(conditions, "Running", "False", "Suspended", "", T1, 1)
    set_condition(conditions, "Succeeded", "Unknown", "Training", "", T1, 1)
    assert [c.type for c in conditions] == ["Created", "Running", "Succeeded"]
    assert conditions[0] == created


def test_get_condition_and_is_true():
    conditions = [running(), running(status="False").model_copy(update={"type": "Failed"})]
    assert get_condition(conditions, "Running") == conditions[0]
    assert get_condition(conditions, "Succeeded") is None
    assert is_true(conditions, "Running")
    assert not is_true(conditions, "Failed")
    assert not is_true(conditions, "Succeeded")


def created(reason: str) -> Condition:
    return Condition(
        type="Created", status="False", reason=reason, message="m", last_transition_time=T0, observed_generation=1
    )


def test_a_condition_set_twice_in_one_reconcile_and_back_where_it_began_is_no_change():
    """observe says Creating, the preflight then says AwaitingPreflight again: nothing happened, no Event."""
    before = [created("AwaitingPreflight")]
    after = list(before)
    changes = [set_condition(after, "Created", "False", "Creating", "creating", T1, 1)]
    changes.append(set_condition(after, "Created", "False", "AwaitingPreflight", "waits", T1, 1))
    assert net_changes(before, after, changes) == []
    assert get_condition(after, "Created").reason == "AwaitingPreflight"


def test_only_where_a_condition_ends_counts_and_it_is_a_change_from_where_it_began():
    before = [created("AwaitingPreflight")]
    after = list(before)
    changes = [set_condition(after, "Created", "False", "Creating", "creating", T1, 1)]
    changes.append(set_condition(after, "Created", "True", "Created", "created", T1, 1))
    (change,) = net_changes(before, after, changes)
    assert (change.condition.status, change.condition.reason, change.previous_status) == ("True", "Created", "False")


def test_a_status_that_flips_and_returns_in_one_reconcile_keeps_its_transition_time():
    before = [running()]
    after = list(before)
    changes = [set_condition(after, "Running", "False", "Restarting", "r", T1, 1)]
    changes.append(set_condition(after, "Running", "True", "PodsRunning", "1 of 1 running", T1, 1))
    assert net_changes(before, after, changes) == []
    assert get_condition(after, "Running").last_transition_time == T0


def test_a_first_condition_is_a_change_from_nothing():
    after: list[Condition] = []
    changes = [set_condition(after, "Planned", "False", "Preflight", "p", T0, 1)]
    (change,) = net_changes([], after, changes)
    assert change.previous_status is None and change.condition.reason == "Preflight"


def test_a_status_that_flips_and_returns_with_another_reason_is_a_change_that_keeps_its_transition_time():
    """As set_condition: a new reason with the same status is a change, and the status did not transition."""
    before = [running()]
    after = list(before)
    changes = [set_condition(after, "Running", "False", "Restarting", "r", T1, 1)]
    changes.append(set_condition(after, "Running", "True", "Resumed", "1 of 1 running", T1, 1))
    (change,) = net_changes(before, after, changes)
    assert (change.condition.reason, change.previous_status) == ("Resumed", "True")
    assert change.condition.last_transition_time == T0
    assert get_condition(after, "Running").last_transition_time == T0
