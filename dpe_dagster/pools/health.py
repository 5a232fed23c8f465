"""Scale-up health and back-off: the one rule every cloud provider's pool uses.

A scale-up is asked for; if its capacity has not arrived within the pool's boot timeout (or the
cloud reports that it failed), the scale-up is overdue, and the launcher backs the pool off: for
the pool's back-off time dpe asks it for nothing more, withdraws the capacity that never became a
node, and places runs on the pool's fallback (launch/pool_choice.py).

The state lives on the pool's own object in its cloud, as marks (tags on a group, annotations on
a resource), so that every dpe process (the sensor, the launcher, the CLI) sees the same back-off.
A provider's pool subclasses `MarkedHealth` and implements the primitives below.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Mapping

from dpe_dagster.pools.base import PoolCapabilities, ScaleUpHealth

if TYPE_CHECKING:
    from dpe_dagster.config import PoolConfig

log = logging.getLogger("dpe.pools.health")

# The marks, by name; a provider writes them under its own prefix (`dpe:` tags, `dpe.io/` annotations).
SCALE_UP_SINCE = "scale-up-since"  # when capacity was asked for that has not all arrived (unix s)
BACKOFF_UNTIL = "backoff-until"  # no scale-up asked of the pool before this (unix s)
BACKOFF_REASON = "backoff-reason"  # why (at most 250 characters)
MARKS = (SCALE_UP_SINCE, BACKOFF_UNTIL, BACKOFF_REASON)
REASON_CHARS = 250


class MarkedHealth(PoolCapabilities):
    """`scale_up_health`, `backoff` and `back_off` on top of a provider's marks and sizes."""

    name: str
    config: PoolConfig  # its boot_timeout_s and backoff_s

    # -- what the provider implements --------------------------------------------------------
    def read_marks(self) -> Mapping[str, str]:
        """The marks on the pool's object (names from MARKS), read afresh."""
        raise NotImplementedError

    def write_marks(self, values: Mapping[str, str | None]) -> None:
        """Set these marks; None removes one."""
        raise NotImplementedError

    def sizes(self) -> tuple[int, int, int, int]:
        """(target, nodes serving, nodes alive, minimum size), read afresh."""
        raise NotImplementedError

    def withdraw(self, size: int) -> None:
        """Lower the target to `size`, dropping capacity asked for that has no node (never a node)."""
        raise NotImplementedError

    def failed_scale_up(self, since: float) -> str | None:
        """What the cloud reports of a scale-up that failed since `since`, if it reports that."""
        return None

    # -- the rule --------------------------------------------------------------------------------
    def backoff(self, now: float | None = None) -> str | None:
        return backoff_reason(self.read_marks(), time.time() if now is None else now)

    def scale_up_health(self, now: float | None = None) -> ScaleUpHealth:
        """Has the capacity asked for arrived? Overdue when it has not within the boot timeout, or
        when the cloud reports a failed scale-up since it was asked for."""
        now = time.time() if now is None else now
        marks = self.read_marks()
        desired, running, _, _ = self.sizes()
        since = float_or_none(marks.get(SCALE_UP_SINCE))
        arrived = ScaleUpHealth(False, f"{running} of {desired} node(s) running", desired, running)
        if running >= desired:
            if since is not None:
                self.write_marks({SCALE_UP_SINCE: None})
            return arrived
        if since is None:
            return arrived
        failed = self.failed_scale_up(since)
        if failed:
            return ScaleUpHealth(True, f"scaling activity failed: {failed}", desired, running)
        waited = now - since
        boot_timeout_s = self.config.boot_timeout_s
        if waited > boot_timeout_s:
            return ScaleUpHealth(True, f"asked for {desired} node(s) {waited:.0f}s ago, {running} running after the "
                                       f"{boot_timeout_s:g}s boot timeout", desired, running)
        return ScaleUpHealth(False, f"{running} of {desired} node(s) running, waiting {waited:.0f}s", desired, running)

    def back_off(self, reason: str, now: float | None = None) -> None:
        """Ask this pool for nothing for its `backoff_s`, and withdraw the part of its target that
        never became a node (so the cloud stops retrying it). Nodes that exist are kept."""
        now = time.time() if now is None else now
        desired, _, alive, low = self.sizes()
        keep = max(alive, low)
        if desired > keep:
            self.withdraw(keep)
        marks = {BACKOFF_UNTIL: f"{now + self.config.backoff_s:.3f}", BACKOFF_REASON: reason[:REASON_CHARS]}
        self.write_marks({**marks, **({SCALE_UP_SINCE: None} if SCALE_UP_SINCE in self.read_marks() else {})})

    # -- for the provider's set_target and nodes ---------------------------------------------------
    def may_scale_up(self, marks: Mapping[str, str], now: float | None = None) -> bool:
        """False (and says why in the log) while the pool is backed off: asking again would only
        make the cloud retry what just failed; runs go to the fallback pool meanwhile."""
        reason = backoff_reason(marks, time.time() if now is None else now)
        if reason:
            log.info("pool %s: %s; not scaling up", self.name, reason)
        return reason is None

    def scale_up_asked(self, marks: Mapping[str, str], now: float | None = None) -> None:
        """Note when capacity was asked for, unless an earlier ask has not all arrived yet."""
        if SCALE_UP_SINCE not in marks:
            self.write_marks({SCALE_UP_SINCE: f"{time.time() if now is None else now:.3f}"})

    def scale_up_arrived(self, marks: Mapping[str, str], running: int, desired: int) -> None:
        """Clear the scale-up mark once every node asked for is running (only bookkeeping: a
        failure is logged and the next look retries)."""
        if SCALE_UP_SINCE in marks and running >= desired:
            try:
                self.write_marks({SCALE_UP_SINCE: None})
            except Exception as error:
                log.warning("pool %s: %s", self.name, error)


def backoff_reason(marks: Mapping[str, str], now: float) -> str | None:
    """Why a pool with these marks is backed off at `now`, or None."""
    until = float_or_none(marks.get(BACKOFF_UNTIL))
    if until is not None and until > now:
        return f"backed off for {until - now:.0f}s more: {marks.get(BACKOFF_REASON) or 'scale-up failed'}"
    return None


def float_or_none(value: str | None) -> float | None:
    """A mark's (or tag's) number, or None when it has none or it is not one."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
