"""The daemon's Gate: at most ``workers`` libvirt operations at once, and an overrun
job's place given back without its call returning."""

from __future__ import annotations

import threading

from snapshotd.edge.daemon import Gate


def _enter(
    gate: Gate, token: str, inside: threading.Event, leave: threading.Event
) -> threading.Thread:
    def run() -> None:
        with gate.hold(token):
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_at_most_limit_holders_and_the_next_enters_when_one_leaves() -> None:
    gate = Gate(2)
    events = {name: (threading.Event(), threading.Event()) for name in "abc"}
    threads = [_enter(gate, name, *events[name]) for name in "ab"]
    assert events["a"][0].wait(5)
    assert events["b"][0].wait(5)
    threads.append(_enter(gate, "c", *events["c"]))
    assert not events["c"][0].wait(0.3)  # two hold it: c waits
    assert gate.holders == 2
    events["a"][1].set()
    assert events["c"][0].wait(5)  # a left: c is in
    for _inside, leave in events.values():
        leave.set()
    for thread in threads:
        thread.join(5)
    assert gate.holders == 0


def test_a_forfeited_place_goes_to_the_next_and_its_late_release_changes_nothing() -> None:
    gate = Gate(1)
    hung_in, hung_out = threading.Event(), threading.Event()
    hung = _enter(gate, "hung", hung_in, hung_out)
    assert hung_in.wait(5)
    next_in, next_out = threading.Event(), threading.Event()
    waiting = _enter(gate, "next", next_in, next_out)
    assert not next_in.wait(0.3)
    gate.forfeit("hung")  # reported as overrun
    assert next_in.wait(5)
    hung_out.set()  # the hung call returns at last: its release must not free "next"'s place
    hung.join(5)
    assert gate.holders == 1
    third_in, third_out = threading.Event(), threading.Event()
    third = _enter(gate, "third", third_in, third_out)
    assert not third_in.wait(0.3)
    next_out.set()
    assert third_in.wait(5)
    third_out.set()
    for thread in (waiting, third):
        thread.join(5)


def test_raising_the_limit_lets_waiting_jobs_in() -> None:
    gate = Gate(1)
    first = (threading.Event(), threading.Event())
    second = (threading.Event(), threading.Event())
    threads = [_enter(gate, "1", *first), _enter(gate, "2", *second)]
    assert first[0].wait(5)
    assert not second[0].wait(0.3)
    gate.set_limit(2)
    assert second[0].wait(5)
    first[1].set()
    second[1].set()
    for thread in threads:
        thread.join(5)
