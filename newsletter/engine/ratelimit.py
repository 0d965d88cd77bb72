"""A thread-safe token bucket: at most `rate` events a second on average, `burst` at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`take()` blocks until a token is free. A rate of 0 (or less) means unlimited."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.rate = float(rate)
        self.capacity = max(1.0, float(burst) if burst is not None else max(1.0, self.rate / 10))
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self) -> float:
        """Take a token if there is one (returns 0), else return the seconds until there is."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def take(self, should_stop: Callable[[], bool] | None = None, max_sleep: float = 0.5) -> bool:
        """Wait for a token; False (without one) when `should_stop()` turns true meanwhile."""
        while True:
            wait = self.try_take()
            if wait <= 0:
                return True
            if should_stop is not None and should_stop():
                return False
            self._sleep(min(wait, max_sleep))
