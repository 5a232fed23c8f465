"""Removing chosen nodes safely: the one sequence every provider's pool uses.

The policy chooses which nodes go (idle, stuck); the pool must never take away a node that holds
work. So `SafeRemoval.remove_nodes` checks, on the provider's own fresh view and at the last moment:

1. every node asked for is a member of the pool, and the pool does not go under its minimum size
   (a stuck node at the minimum is replaced instead: removed without lowering the target);
2. none is busy, and none whose busy status cannot be told unless it is stuck (unknown too long);
3. where the nodes are Kubernetes nodes: cordon them, look again (a pod placed between the check
   and the cordon makes its node busy, and it is uncordoned and kept), then drain what is not work;
4. terminate them one by one; on a failure, uncordon the nodes not terminated and say which went.

A provider implements the primitives below; it never writes the sequence again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

from dpe_dagster.pools.base import PoolCapabilities, PoolError

log = logging.getLogger("dpe.pools.removal")


class SafeRemoval(PoolCapabilities):
    """`NodePool.remove_nodes` on top of a provider's primitives."""

    name: str
    # The pool's nodes are Kubernetes nodes dpe can cordon and drain (`cordon`, `drain`).
    cordons: bool = False

    # -- what the provider implements --------------------------------------------------------
    def removal_members(self) -> tuple[list[str], int, int]:
        """(ids of the pool's nodes alive now, its target size, its minimum size), read afresh."""
        raise NotImplementedError

    def busy_now(self, node_ids: Sequence[str]) -> dict[str, bool | None]:
        """Whether each of these nodes holds work, read afresh (None: cannot tell). The pool's
        other members may be passed too: a run placed on one node is not on another."""
        raise NotImplementedError

    def terminate(self, node_id: str, lower_target: bool) -> None:
        """Take this node away, lowering the pool's target by one when `lower_target` (else the
        pool replaces it). PoolError when the provider refuses."""
        raise NotImplementedError

    def cordon(self, node_ids: Sequence[str], cordoned: bool = True) -> None:
        """Mark the nodes (un)schedulable (only called when `cordons`)."""

    def drain(self, node_ids: Sequence[str]) -> None:
        """Move off the cordoned nodes what is not work (only called when `cordons`)."""

    # -- the sequence ---------------------------------------------------------------------------
    def remove_nodes(self, node_ids: Sequence[str], stuck: Sequence[str] = ()) -> None:
        node_ids = list(dict.fromkeys(node_ids))
        if not node_ids:
            return
        members, size, low = self.removal_members()
        unknown = [n for n in node_ids if n not in members]
        if unknown:
            raise PoolError(f"pool {self.name}: no node(s) {', '.join(unknown)} in the pool")
        # A stuck node at the minimum size is replaced: the pool needs a node there, and not that one.
        replaced = [n for n in node_ids if n in stuck][:max(0, len(node_ids) - max(0, size - low))]
        if size - len(node_ids) + len(replaced) < low:
            raise PoolError(f"pool {self.name}: removing {len(node_ids)} node(s) would take it from {size} to "
                            f"{size - len(node_ids)}, under its minimum size {low}")
        busy = self.busy_now(members)

        def refuses(node_id: str) -> bool:
            state = busy.get(node_id)
            return state is True or (state is None and node_id not in stuck)

        refused = sorted(n for n in node_ids if refuses(n))
        if refused:
            raise PoolError(f"pool {self.name}: refusing to remove busy node(s) {', '.join(refused)}")
        cordoned = self.cordons and self._cordon_for_removal(node_ids, stuck, busy)
        if cordoned:
            busy = self.busy_now(members)
            now_busy = sorted(n for n in node_ids if refuses(n))
            if now_busy:
                self.cordon(now_busy, False)
                raise PoolError(f"pool {self.name}: node(s) {', '.join(now_busy)} took work while being cordoned; "
                                "uncordoned and kept")
            try:
                self.drain(node_ids)
            except Exception as error:
                self._uncordon(node_ids)
                raise PoolError(f"pool {self.name}: could not drain {', '.join(node_ids)}: {error}; uncordoned, "
                                "nothing removed") from error
        done: list[str] = []
        for node_id in node_ids:
            try:
                self.terminate(node_id, lower_target=node_id not in replaced)
            except PoolError as error:
                left = node_ids[len(done):]
                if cordoned:
                    self._uncordon(left)
                raise PoolError(f"{error}; terminated {', '.join(done) or 'none'}, kept {', '.join(left)}") from error
            done.append(node_id)

    def _cordon_for_removal(self, node_ids: list[str], stuck: Sequence[str], busy: dict[str, bool | None]) -> bool:
        """Cordon the nodes; False when that failed for nodes that may go uncordoned: all stuck
        for an unknown busy status (the API that cannot cordon is the one that could not tell)."""
        try:
            self.cordon(node_ids)
            return True
        except Exception as error:
            self._uncordon(node_ids)
            if not all(n in stuck and busy.get(n) is None for n in node_ids):
                raise PoolError(f"pool {self.name}: could not cordon {', '.join(node_ids)}: {error}; "
                                "nothing removed") from error
            log.warning("pool %s: could not cordon %s (%s); terminating them uncordoned: their busy status has "
                        "been unknown past the grace", self.name, ", ".join(node_ids), error)
            return False

    def _uncordon(self, node_ids: Sequence[str]) -> None:
        with contextlib.suppress(Exception):
            self.cordon(node_ids, False)
