"""The background Event sender: a reconcile queues and goes on; order kept, a flood dropped, stop sends the rest."""

from __future__ import annotations

import threading
import time

from finetune_operator.event_recorder import EventRecorder


def event(number: int) -> dict:
    return {"reason": f"Reason{number}"}


def test_events_are_sent_in_the_order_they_were_recorded_and_stop_sends_every_queued_one():
    sent: list[dict] = []
    recorder = EventRecorder(sent.append).start()
    for number in range(50):
        recorder.record(event(number))
    recorder.stop()
    assert sent == [event(number) for number in range(50)]


def test_recording_never_waits_for_the_sender_and_a_full_queue_drops_and_counts():
    release = threading.Event()
    sent: list[dict] = []

    def slow(item: dict) -> None:
        release.wait(10)
        sent.append(item)

    recorder = EventRecorder(slow, capacity=3).start()
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
