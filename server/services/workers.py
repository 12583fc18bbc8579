"""Worker places: how many calls price at once in a process. Only the work takes a place (reading
the customer, the prefilter, pricing), never a stream waiting for its client or a watch waiting
for a change, so idle streams cannot starve the calls that compute."""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Iterator

from ..deadline import Deadline
from ..errors import DeadlineExceeded


class Workers:
    """Places handed over in the order the calls asked for them: a freed place goes to the call
    that has waited longest. (A semaphore lets a call that just arrived take it first: under load
    some callers wait again and again, and the latency's tail grows with the queue.)"""

    def __init__(self, places: int):
        self._free = places
        self._lock = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()  # one held lock per waiting call, oldest first

    @contextmanager
    def place(self, deadline: Deadline) -> Iterator[None]:
        """Hold a place for the block, waiting for one no longer than `deadline`."""
        self._take(deadline)
        try:
            yield
        finally:
            self._give_back()

    def _take(self, deadline: Deadline) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        if turn.acquire(timeout=deadline.left()):
            return  # handed over by _give_back
        with self._lock:
            try:
                self._waiting.remove(turn)
                handed_over = False
            except ValueError:  # handed over between the time-out and this lock
                handed_over = True
        if handed_over:
            self._give_back()  # to the next in line
        raise DeadlineExceeded("deadline exceeded waiting for a free worker")

    def _give_back(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # the place passes on without being free
            else:
                self._free += 1
