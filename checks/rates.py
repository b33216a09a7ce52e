"""`Rates`: events over exposures per interval, the input of rate comparisons."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rates:
    """Per-interval events and exposures; interval midpoints in seconds; interval length."""

    events: tuple[float, ...]
    exposure: tuple[float, ...]
    times: tuple[float, ...]
    seconds: float

    def total(self) -> tuple[float, float]:
        return float(sum(self.events)), float(sum(self.exposure))

    def recent_half(self) -> Rates:
        n = len(self.events) // 2
        return Rates(self.events[n:], self.exposure[n:], self.times[n:], self.seconds)

    def span(self) -> float:
        return len(self.events) * self.seconds

    def centre(self) -> float:
        x = np.asarray(self.exposure, dtype=float)
        if x.sum() <= 0:
            return float(np.mean(self.times)) if self.times else 0.0
        return float(np.dot(x, self.times) / x.sum())
