"""Redis, optional: a push channel for changes and a shared store for the rate limit.

Redis is never the truth (that is the database) and never a reason to fail a call: every
command has a short timeout, and after a failure the link reports `down` and the callers use
their fallbacks (polling, the local token bucket) for `retry_seconds` before trying again.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, TypeVar

import redis

from ..config import RedisSettings

log = logging.getLogger("tradeup.redis")
T = TypeVar("T")


class RedisLink:
    def __init__(self, settings: RedisSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.channel = f"{settings.prefix}:changes"
        self._clock = clock
        timeout = settings.timeout_seconds
        self.client = redis.Redis.from_url(settings.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry_on_timeout=False)
        self.up: bool | None = None  # unknown until the first command
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._pubsub = None

    @property
    def state(self) -> str:
        return "up" if self.up else ("down" if self.up is False else "connecting")

    def key(self, *parts: str) -> str:
        return ":".join((self.settings.prefix, *parts))

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        if up == self.up:
            return  # the common case, without the lock
        with self._lock:
            if up == self.up:
                return
            self.up = up
            if not up:
                self._retry_at = self._clock() + self.settings.retry_seconds
        if up:
            log.warning("redis is up: changes are pushed, the rate limit is shared")
        else:
            log.warning("redis is down (%s: %s): polling the database for changes and limiting rates "
                        "per process until it answers", error.__class__.__name__, error)

    def call(self, command: Callable[[redis.Redis], T], fallback: Callable[[], T]) -> T:
        """command(client), or fallback() when Redis failed within the last retry_seconds or fails now."""
        if self.up is False and self._clock() < self._retry_at:
            return fallback()
        try:
            result = command(self.client)
        except (redis.RedisError, OSError) as exc:
            self._mark(False, exc)
            with self._lock:
                self._retry_at = self._clock() + self.settings.retry_seconds
            return fallback()
        self._mark(True)
        return result

    def publish(self, message: dict[str, Any]) -> None:
        self.call(lambda client: client.publish(self.channel, json.dumps(message)), lambda: None)

    def listen(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        """Deliver every message of the channel to on_message, on a thread, resubscribing after
        failures until close()."""
        self._listener = threading.Thread(target=self._listen, args=(on_message,), name="redis-listen", daemon=True)
        self._listener.start()

    def _listen(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        # Its own connection: a subscriber idles for long, so no short read timeout here.
        subscriber = redis.Redis.from_url(self.settings.url, socket_connect_timeout=self.settings.timeout_seconds,
                                          socket_timeout=None, socket_keepalive=True)
        while not self._stop.is_set():
            pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._pubsub = pubsub
                self._mark(True)
                on_message({"kind": "subscribed"})  # catch up on what was missed while away
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        try:
                            on_message(json.loads(message["data"]))
                        except (ValueError, TypeError):
                            log.warning("ignoring a malformed message on %s", self.channel)
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                self._mark(False, exc)
                self._stop.wait(self.settings.retry_seconds)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass
        subscriber.close()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=2)
        self.client.close()
