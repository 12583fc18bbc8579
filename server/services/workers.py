"""Worker places: how many calls price at once in a process. Only the work takes a place (reading
the customer, the prefilter, pricing), never a stream waiting for its client or a watch waiting
for a change, so idle streams cannot starve the calls that compute."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from ..deadline import Deadline


class Workers:
    def __init__(self, places: int):
        self._places = threading.BoundedSemaphore(places)

    @contextmanager
    def place(self, deadline: Deadline) -> Iterator[None]:
        """Hold a place for the block, waiting for one no longer than `deadline`."""
        deadline.acquire(self._places, "a free worker")
        try:
            yield
        finally:
            self._places.release()
