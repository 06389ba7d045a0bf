"""The background Event senders: a reconcile queues and goes on; each object's order kept, a flood dropped,
stop sends the rest."""

from __future__ import annotations

import threading
import time

from finetune_operator.event_recorder import EventRecorder


def event(number: int, uid: str = "uid-1") -> dict:
    return {"reason": f"Reason{number}", "involvedObject": {"uid": uid}}


def test_each_objects_events_are_sent_in_the_order_they_were_recorded_and_stop_sends_every_queued_one():
    sent: list[dict] = []
    lock = threading.Lock()

    def send(item: dict) -> None:
        time.sleep(0.0005)  # senders interleave
        with lock:
            sent.append(item)

    recorder = EventRecorder(send, senders=4).start()
    recorded = [event(number, uid=f"uid-{number % 7}") for number in range(70)]
    for item in recorded:
        recorder.record(item)
    recorder.stop()
    assert sorted(sent, key=recorded.index) == recorded
    for uid in {item["involvedObject"]["uid"] for item in recorded}:
        assert [e for e in sent if e["involvedObject"]["uid"] == uid] == [
            e for e in recorded if e["involvedObject"]["uid"] == uid
        ]


def test_recording_never_waits_for_the_sender_and_a_full_queue_drops_and_counts():
    release = threading.Event()
    sent: list[dict] = []

    def slow(item: dict) -> None:
        release.wait(10)
        sent.append(item)

    recorder = EventRecorder(slow, capacity=3, senders=1).start()
    recorder.record(event(0))  # taken by the sender, which now waits
    while recorder.pending():
        time.sleep(0.001)
    for number in range(1, 6):
        recorder.record(event(number))  # 1-3 fit, 4 and 5 do not
    assert recorder.dropped == 2
    release.set()
    recorder.stop()
    assert sent == [event(number) for number in range(4)]


def test_an_event_that_fails_to_send_does_not_stop_the_next_ones():
    sent: list[dict] = []

    def send(item: dict) -> None:
        if item["reason"] == "Reason1":
            raise ValueError("a bug in one event")
        sent.append(item)

    recorder = EventRecorder(send).start()
    for number in range(3):
        recorder.record(event(number))
    recorder.stop()
    assert sent == [event(0), event(2)]


def test_stop_before_start_returns_at_once():
    EventRecorder(lambda _: None).stop()
