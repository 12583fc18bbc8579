"""Worker places (server/services/workers.py): handed over in arrival order, every wait bounded
by the call's deadline, and no place lost or made up, however the waits end."""
from __future__ import annotations

import threading
import time

import pytest

from server.deadline import Deadline
from server.errors import DeadlineExceeded
from server.services.workers import Workers


def queued(workers: Workers, count: int) -> None:
    """Wait (bounded) until `count` calls wait for a place."""
    until = time.monotonic() + 5
    while len(workers._waiting) < count:
        assert time.monotonic() < until, "the callers never queued"
        time.sleep(0.001)


def free_places(workers: Workers) -> int:
    """How many places can be taken at once without waiting (then given back)."""
    taken = []
    try:
        while True:
            context = workers.place(Deadline.after(0))
            context.__enter__()
            taken.append(context)
    except DeadlineExceeded:
        return len(taken)
    finally:
        for context in taken:
            context.__exit__(None, None, None)


def test_places_go_to_the_longest_waiting_call_first():
    workers = Workers(1)
    served: list[int] = []

    def call(k: int) -> None:
        with workers.place(Deadline.after(5)):
            served.append(k)

    with workers.place(Deadline.after(5)):
        callers = []
        for k in range(6):  # each queued before the next arrives
            caller = threading.Thread(target=call, args=(k,))
            caller.start()
            callers.append(caller)
            queued(workers, k + 1)
    for caller in callers:
        caller.join(5)
    assert served == list(range(6))
    assert free_places(workers) == 1


def test_a_wait_ends_at_the_deadline_and_the_place_count_stays_right():
    workers = Workers(2)
    with workers.place(Deadline.after(5)), workers.place(Deadline.after(5)):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="waiting for a free worker"):
            with workers.place(Deadline.after(0.05)):
                pass
        assert 0.04 <= time.monotonic() - started < 2
        assert not workers._waiting  # it left the line
    assert free_places(workers) == 2


def test_places_are_neither_lost_nor_made_up_under_contention():
    workers = Workers(3)
    holding, most, failed = [0], [0], []
    lock = threading.Lock()

    def call(k: int) -> None:
        try:
            with workers.place(Deadline.after(0.002 * (k % 7))):  # some give up, some get one
                with lock:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                time.sleep(0.001)
                with lock:
                    holding[0] -= 1
        except DeadlineExceeded:
            failed.append(k)

    callers = [threading.Thread(target=call, args=(k,)) for k in range(200)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert most[0] == 3 and 0 < len(failed) < 200
    assert free_places(workers) == 3 and not workers._waiting
