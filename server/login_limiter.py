"""Failed sign-ins, counted in memory per key (an account name, a client address) over a sliding window.

A key with `max_failures` failures in the last `window_s` seconds is locked until the oldest of them
leaves the window; each failure also earns a growing delay before its answer. The clock is injectable
(tests move time without sleeping). One process, one limiter: a restart forgets every count.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable

MAX_DELAY_S = 2.0
MAX_KEYS = 100_000  # bounds memory under a flood of made-up names: the stalest keys are dropped first


class LoginLimiter:
    def __init__(self, max_failures: int = 5, window_s: float = 300.0, delay_step_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.delay_step_s, self.clock = max_failures, window_s, delay_step_s, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = self.clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, keys: Iterable[str]) -> int | None:
        """Whole seconds until every locked key among `keys` is free again; None when none is locked."""
        waits = []
        for key in keys:
            failures = self._recent(key)
            if len(failures) >= self.max_failures:
                waits.append(failures[-self.max_failures] + self.window_s - self.clock())
        return max(1, math.ceil(max(waits))) if waits else None

    def fail(self, keys: Iterable[str]) -> float:
        """Count one failure against each key; return when it happened (to `withdraw` it)."""
        at = self.clock()
        for key in keys:
            self._recent(key)
            self._failures.setdefault(key, deque()).append(at)
        if len(self._failures) > MAX_KEYS:
            self._shrink()
        return at

    def _shrink(self) -> None:
        for key in list(self._failures):
            self._recent(key)
        keep = int(MAX_KEYS * 0.9)  # stalest first, and with room so that this runs rarely
        if len(self._failures) > keep:
            for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:len(self._failures) - keep]:
                del self._failures[key]

    def withdraw(self, key: str, at: float) -> None:
        """Take back the failure counted at `at` (an attempt counted before it was checked, that succeeded)."""
        failures = self._failures.get(key)
        if failures is not None and at in failures:
            failures.remove(at)
            if not failures:
                del self._failures[key]

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, keys: Iterable[str]) -> int:
        return max((len(self._recent(key)) for key in keys), default=0)

    def delay(self, keys: Iterable[str]) -> float:
        """Seconds to wait before answering a failure: grows with the most failures of any key, capped."""
        return min(self.delay_step_s * self.failures(keys), MAX_DELAY_S)
