"""Node boot time: a constant or a distribution, parsed from one command-line value."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

BOOT_FORMS = "SECONDS, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA (seconds)"


@dataclass(frozen=True)
class BootTime:
    kind: str  # fixed | uniform | lognormal
    a: float
    b: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> "BootTime":
        return cls("fixed", float(seconds))

    @classmethod
    def parse(cls, text: str) -> "BootTime":
        parts = str(text).split(":")
        try:
            numbers = [float(p) for p in parts[1:]] if len(parts) > 1 else [float(parts[0])]
        except ValueError:
            raise ValueError(f"--boot-seconds: {text!r} is not allowed; use {BOOT_FORMS}") from None
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(f"--boot-seconds: {text!r} is not allowed; values must be finite")
        if len(parts) == 1 and numbers[0] >= 0:
            return cls.fixed(numbers[0])
        if parts[0] == "uniform" and len(numbers) == 2 and 0 <= numbers[0] <= numbers[1]:
            return cls("uniform", numbers[0], numbers[1])
        if parts[0] == "lognormal" and len(numbers) == 2 and numbers[0] > 0 and numbers[1] >= 0:
            return cls("lognormal", numbers[0], numbers[1])
        raise ValueError(f"--boot-seconds: {text!r} is not allowed; use {BOOT_FORMS} "
                         "with 0 <= LOW <= HIGH, MEDIAN > 0, SIGMA >= 0")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return self.a * math.exp(rng.gauss(0.0, self.b))

    def typical(self) -> float:
        """A boot a planner can count on (the 90th percentile)."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return self.a + 0.9 * (self.b - self.a)
        return self.a * math.exp(1.2816 * self.b)

    def __str__(self) -> str:
        return f"{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"
