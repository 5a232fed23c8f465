"""The discrete-event simulation of one node pool under one autoscaler.

Events are job arrivals, job completions, nodes becoming ready, spot interruptions and the
autoscaler's own wake-ups; nothing is evaluated between events, because nothing changes there.
Placement is per node, as Kubernetes does it: a job of at most one node's CPUs (and memory) runs on
one node, a larger one takes whole empty nodes. Paid time runs from a node's request to its removal
(or the end of the replay, when the last job finishes).

The autoscaler is a `Scaler`; it acts through `add_nodes`, `remove_nodes`, `evict` and `wake_at`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass
from typing import AbstractSet, Callable, Protocol

from dpe_dagster import packing
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.policy import NodeRoom
from dpe_dagster.sim.boot import BootTime
from dpe_dagster.sim.workload import Workload

COMPLETE, INTERRUPT, READY, TICK = 0, 1, 2, 3
WHOLE = math.inf  # the group of pending jobs that take whole nodes


def whole_nodes(work: Workload, shape: PoolShape) -> list[int]:
    """Per job, the whole nodes it takes (0: it fits on one node, which it may share)."""
    return [packing.whole_nodes(c, m, shape.cpus, shape.memory_gb) for c, m in zip(work.cpus, work.memory_gb)]


class SimulationError(RuntimeError):
    """The replay cannot finish (a job larger than the pool can ever hold)."""


@dataclass(frozen=True)
class PoolShape:
    cpus: float
    memory_gb: float = math.inf  # inf: memory is not modelled
    price: float = 1.0  # per node-hour
    boot: BootTime = BootTime.fixed(120.0)
    spot_rate_per_hour: float = 0.0  # interruptions per node-hour; 0: no interruptions
    fallback_price: float | None = None  # price of the fallback pool's nodes
    fallback_window_s: float = 600.0  # after an interruption, new nodes come from the fallback pool


class SimNode:
    __slots__ = ("id", "requested_at", "ready", "free_cpus", "free_mem", "jobs", "idle_since", "price",
                 "lifecycle", "end_hint", "room", "_views", "busy_since")

    def __init__(self, node_id: str, now: float, cpus: float, mem: float, price: float, lifecycle: str):
        self.id = node_id
        self.requested_at = now
        self.ready = False
        self.free_cpus = cpus
        self.free_mem = mem
        self.jobs: dict[int, None] = {}
        self.idle_since: float | None = None  # set while ready and empty
        self.price = price
        self.lifecycle = lifecycle
        self.end_hint = 0.0  # latest expected end of the jobs on it
        self.busy_since = 0.0
        self._views: dict[tuple[bool, bool], Node] = {}
        self.room = NodeRoom(node_id, cpus, mem, None)

    def measure(self) -> None:
        """Rebuild `room` (what placement sees) after the node's jobs changed."""
        self.room = NodeRoom(self.id, self.free_cpus, self.free_mem, self.end_hint if self.jobs else None)

    def refresh(self) -> Node:
        """This node as a provider reports it, now (`Simulation.views` keeps it): rebuilt when its
        state or busyness changes."""
        key = (self.ready, bool(self.jobs))
        node = self._views.get(key)
        if node is None:
            node = Node(self.id, "running" if self.ready else "pending", self.requested_at, key[1], self.lifecycle)
            self._views[key] = node
        return node


NodeChoice = Callable[["Simulation", int, AbstractSet[SimNode]], "SimNode | None"]


class RunWatch(Protocol):
    """Told of every change to `Simulation.pending` and `Simulation.running`, in the order made, so
    that a scaler can keep its own view of the active jobs in their order without a pass over them."""

    def queued(self, job: int) -> None:
        """The job entered `pending` (it arrived, or was evicted)."""

    def started(self, job: int, nodes: list[SimNode]) -> None:
        """The job left `pending` and entered `running`, on these nodes (`start[job]` is set)."""

    def ended(self, job: int) -> None:
        """The job left `running` (it completed, or was evicted)."""


class Scaler(Protocol):
    """An autoscaler under replay: every policy of `sim.policies` builds one."""

    name: str
    # The node a pending job goes to among the ready nodes with room, leaving out `exclude`, or
    # None to leave it waiting (the scheduler's choice, called as `choose(sim, job, exclude)`).
    choose: NodeChoice

    def start(self, sim: Simulation) -> None:
        """Act before the first event (a fixed cluster's nodes are up from the start)."""

    def step(self, sim: Simulation, arrived: bool, ticked: bool, changed: bool) -> None:
        """Decide after each batch of events at one time: jobs arrived, the scaler's own wake-up
        came (`wake_at`), something else changed (a job ended, a node came up or was lost)."""


class Simulation:
    def __init__(self, work: Workload, shape: PoolShape, scaler: Scaler | None, *, seed: int = 0,
                 progress: Callable[[float], None] | None = None, timeline: bool = False):
        self.work = work
        self.shape = shape
        self.scaler = scaler
        self.rng = random.Random(seed)
        self.progress = progress
        self.now = 0.0
        n = len(work)
        self.whole = whole_nodes(work, shape)
        self.nodes: dict[str, SimNode] = {}  # alive (booting or ready), in launch order
        self.views: dict[str, Node] = {}  # the same nodes as a provider lists them (`SimNode.refresh`)
        self.ready_nodes: list[SimNode] = []
        self.idle_nodes: dict[SimNode, None] = {}  # ready and empty
        self.pending: dict[int, None] = {}
        self.running: dict[int, list[SimNode]] = {}
        self.start = [math.nan] * n
        self._version = [0] * n
        self._events: list = []
        self._seq = itertools.count()
        self._ticks: set[float] = set()
        self._node_ids = itertools.count(1)
        self._fallback_until = -math.inf
        self.done = 0
        self.paid_node_seconds = 0.0
        self.cost_node_seconds = 0.0  # node-seconds weighted by price
        self.scale_ups = self.scale_downs = self.nodes_launched = 0
        self.evictions = self.interruptions = 0
        self.lost_cpu_seconds = 0.0
        self.busy_node_seconds = self.boot_node_seconds = 0.0  # paid = booting + busy + idle
        self.peak_nodes = 0
        self.timeline: list[tuple[float, int, float]] | None = [] if timeline else None
        self._demand_cpus = 0.0
        self._requeued = False
        self.arrivals = range(0)  # the jobs that arrived in the current batch of events
        self._pending_whole = 0  # pending jobs that need whole nodes
        # Indexes that let a scheduling pass skip jobs no node has room for, instead of asking the
        # scaler's `choose` about every pending job after every event:
        # pending jobs grouped by the CPUs they ask (whole-node jobs under WHOLE), each group in
        # the order the jobs entered `pending`, with that order's number for merging the groups
        self._pending_seq: list[int] = [0] * n
        self._pending_by_cpus: dict[float, dict[int, None]] = {}
        self._entered = itertools.count()
        self._started: list[int] = []
        self._pending_sizes: dict[tuple[float, float], int] = {}  # (cpus, memory) -> pending jobs, one-node jobs
        self._pending_whole_nodes = 0  # whole nodes the pending whole-node jobs take, together
        # how many ready nodes that run jobs have each amount of free CPUs (empty ones are `idle_nodes`)
        self._busy_free: dict[float, int] = {}
        self._busy_free_max: float | None = None  # cached max of `_busy_free`'s keys; None: stale
        self.run_watch: RunWatch | None = None  # set by a scaler that keeps its own view of the active jobs
        self.placement_attempts = 0  # pending jobs offered to the scaler's `choose` (a measure of work)
        self.scheduling_passes = 0

    # -- actions for autoscalers -------------------------------------------------------------
    def add_nodes(self, count: int, *, ready: bool = False) -> None:
        if count <= 0:
            return
        self.scale_ups += 1
        shape = self.shape
        for _ in range(count):
            fallback = shape.fallback_price is not None and self.now < self._fallback_until
            price = shape.fallback_price if fallback else shape.price
            lifecycle = "on-demand" if fallback or shape.spot_rate_per_hour <= 0 else "spot"
            node = SimNode(f"n{next(self._node_ids)}", self.now, shape.cpus, shape.memory_gb, price, lifecycle)
            self.nodes[node.id] = node
            self._show(node)
            self.nodes_launched += 1
            if ready:
                self._ready(node)
            else:
                self._push(self.now + shape.boot.sample(self.rng), READY, node)
            if lifecycle == "spot":
                self._push(self.now + self.rng.expovariate(shape.spot_rate_per_hour / 3600.0), INTERRUPT, node)
        self.peak_nodes = max(self.peak_nodes, len(self.nodes))
        self._mark()

    def remove_nodes(self, nodes: list[SimNode]) -> None:
        if not nodes:
            return
        self.scale_downs += 1
        for node in nodes:
            if node.jobs:
                raise SimulationError(f"node {node.id} still runs jobs; evict them first")
            self._drop(node)
        self._mark()

    def evict(self, node: SimNode) -> list[int]:
        """Stop every job on this node; they go back to pending and restart from the beginning."""
        jobs = list(node.jobs)
        for job in jobs:
            self.evictions += 1
            self.lost_cpu_seconds += (self.now - self.start[job]) * self.work.cpus[job]
            self._version[job] += 1
            for held in self.running.pop(job):
                self._release(held, job)
            if self.run_watch is not None:
                self.run_watch.ended(job)
            self._enqueue(job)
            self._requeued = True
        return jobs

    def active_jobs(self) -> list[int]:
        """Jobs that wait or run: what Dagster calls QUEUED, STARTING or STARTED."""
        return [*self.pending, *self.running]

    def pending_sizes(self) -> tuple[dict[tuple[float, float], int], int]:
        """What the pending jobs ask, without a pass over them: how many jobs of each (CPUs,
        memory) fit on one node, and how many whole nodes the others take together."""
        return self._pending_sizes, self._pending_whole_nodes

    def wake_at(self, when: float) -> None:
        when = max(when, self.now)
        if when not in self._ticks:
            self._ticks.add(when)
            self._push(when, TICK, None)

    def schedule(self, only: list[int] | None = None) -> None:
        """The Kubernetes scheduler: place pending jobs where they fit, oldest first. A job that
        needs whole nodes and cannot get them holds the empty nodes it saw, so small jobs do not
        starve it. `only`: just these new jobs (nothing else changed since the last pass)."""
        if not self.pending or not self.ready_nodes:
            return
        self.scheduling_passes += 1
        whole = self.whole
        held: set[SimNode] = set()
        if only is not None:
            if self._pending_whole > sum(1 for j in only if whole[j]):
                held.update(self.idle_nodes)
            for job in only:
                self._try(job, held)
            self._forget_started()
            return
        # Oldest first across the groups; a group leaves the pass once no node that is not held
        # has room for its jobs (room only shrinks during a pass, so it never comes back).
        groups = self._pending_by_cpus
        seq = self._pending_seq
        heads = []
        for cpus, jobs in groups.items():
            if jobs and self._may_fit(cpus, held):
                walk = iter(jobs)  # jobs that start leave the group after the pass
                job = next(walk)
                heads.append((seq[job], cpus, job, walk))
        heapq.heapify(heads)
        while heads:
            _, cpus, job, walk = heads[0]
            if not self._may_fit(cpus, held):
                heapq.heappop(heads)
                continue
            self._try(job, held)
            following = next(walk, None)
            if following is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (seq[following], cpus, following, walk))
        self._forget_started()

    def _forget_started(self) -> None:
        groups, whole, cpus = self._pending_by_cpus, self.whole, self.work.cpus
        for job in self._started:
            del groups[WHOLE if whole[job] else cpus[job]][job]
        self._started.clear()

    def _try(self, job: int, held: set) -> None:
        """Offer one pending job to the nodes (see `schedule`)."""
        need = self.whole[job]
        if need:
            if len(self.idle_nodes) <= len(held):  # every empty node is held already
                return
            empties = [n for n in self.ready_nodes if not n.jobs and n not in held]
            if len(empties) >= need:
                self._begin(job, empties[:need], whole_nodes=True)
            else:
                held.update(empties)
            return
        if not self._may_fit(self.work.cpus[job], held):
            return
        self.placement_attempts += 1
        node = self.scaler.choose(self, job, held)
        if node is not None:
            self._begin(job, [node], whole_nodes=False)

    def _may_fit(self, cpus: float, held: set) -> bool:
        """Whether some ready node outside `held` has `cpus` free (held nodes are all empty)."""
        if cpus == WHOLE:
            return len(self.idle_nodes) > len(held)
        if len(self.idle_nodes) > len(held) and cpus <= self.shape.cpus:
            return True
        top = self._busy_free_max
        if top is None:
            top = self._busy_free_max = max(self._busy_free, default=-math.inf)
        return cpus <= top

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> "Simulation":
        work, n = self.work, len(self.work)
        arrival = work.arrival
        events = self._events
        i = 0
        stalls = 0  # batches in a row at the same time holding only wake-ups
        next_report = 0
        self.scaler.start(self)
        while self.done < n:
            t = events[0][0] if events else math.inf
            if i < n and arrival[i] <= t:
                t = arrival[i]
            if t == math.inf:
                raise SimulationError(
                    f"{n - self.done} job(s) can never run: the pool never has room for them "
                    f"(e.g. job {next(iter(self.pending), '?')} needs {self._need(next(iter(self.pending), 0))})"
                )
            if t == self.now and not (events and events[0][1] != TICK) and not (i < n and arrival[i] == t):
                stalls += 1
                if stalls > 1000:
                    raise SimulationError(f"{self.scaler.name}: keeps waking itself at t={t:g} without progress")
            else:
                stalls = 0
            self.now = t
            arrived = False
            first = i
            while i < n and arrival[i] == t:
                self._enqueue(i)
                self._demand_cpus += work.cpus[i]
                i += 1
                arrived = True
            ticked = False
            changed = False
            self.arrivals = range(first, i)
            while events and events[0][0] == t:
                _, kind, _, payload = heapq.heappop(events)
                if kind == COMPLETE:
                    job, version = payload
                    if version == self._version[job]:
                        self._complete(job)
                        changed = True
                elif kind == READY:
                    if payload.id in self.nodes and not payload.ready:
                        self._ready(payload)
                        changed = True
                elif kind == INTERRUPT:
                    if payload.id in self.nodes:
                        self._interrupt(payload)
                        changed = True
                else:
                    self._ticks.discard(t)
                    ticked = True
            self._requeued = False
            if changed:
                self.schedule()
            elif arrived:
                self.schedule(list(range(first, i)))
            self.scaler.step(self, arrived, ticked, changed)
            if self._requeued:
                self.schedule()
            if self.progress is not None and i >= next_report:
                self.progress(i / n)
                next_report = i + max(1, n // 200)
        if self.progress is not None:
            self.progress(1.0)
        for node in list(self.nodes.values()):
            self._drop(node)
        return self

    # -- internals ---------------------------------------------------------------------------
    def _need(self, job: int) -> str:
        return f"{self.work.cpus[job]:g} CPUs"

    def _push(self, when: float, kind: int, payload) -> None:
        heapq.heappush(self._events, (when, kind, next(self._seq), payload))

    def _enqueue(self, job: int) -> None:
        self.pending[job] = None
        if self.run_watch is not None:
            self.run_watch.queued(job)
        self._pending_seq[job] = next(self._entered)
        group = WHOLE if self.whole[job] else self.work.cpus[job]
        jobs = self._pending_by_cpus.get(group)
        if jobs is None:
            jobs = self._pending_by_cpus[group] = {}
        jobs[job] = None
        if self.whole[job]:
            self._pending_whole += 1
            self._pending_whole_nodes += self.whole[job]
        else:
            size = (self.work.cpus[job], self.work.memory_gb[job])
            self._pending_sizes[size] = self._pending_sizes.get(size, 0) + 1

    def _count_free(self, node: SimNode, change: int) -> None:
        """Add (1) or take away (-1) a busy ready node's free CPUs in the index of free room."""
        free = node.free_cpus
        count = self._busy_free.get(free, 0) + change
        if count:
            self._busy_free[free] = count
        else:
            del self._busy_free[free]
        top = self._busy_free_max
        if top is not None and (free > top if change > 0 else free == top):
            self._busy_free_max = free if change > 0 else None

    def _mark(self) -> None:
        if self.timeline is not None:
            self.timeline.append((self.now, len(self.nodes), self._demand_cpus))

    def _show(self, node: SimNode) -> None:
        """List the node in `views` as it is now (after its state or busyness changed)."""
        self.views[node.id] = node.refresh()

    def _ready(self, node: SimNode) -> None:
        self.boot_node_seconds += self.now - node.requested_at
        node.ready = True
        node.idle_since = self.now
        self.idle_nodes[node] = None
        self._show(node)
        self.ready_nodes.append(node)

    def _drop(self, node: SimNode) -> None:
        if node.jobs:
            self.busy_node_seconds += self.now - node.busy_since
        if not node.ready:
            self.boot_node_seconds += self.now - node.requested_at
        seconds = self.now - node.requested_at
        self.paid_node_seconds += seconds
        self.cost_node_seconds += seconds * node.price
        del self.nodes[node.id]
        del self.views[node.id]
        self.idle_nodes.pop(node, None)
        if node.ready:
            if node.jobs:
                self._count_free(node, -1)
            self.ready_nodes.remove(node)

    def _begin(self, job: int, nodes: list[SimNode], whole_nodes: bool) -> None:
        work = self.work
        del self.pending[job]
        self._started.append(job)  # leaves its group in `_pending_by_cpus` when the pass ends
        if whole_nodes:
            self._pending_whole -= 1
            self._pending_whole_nodes -= self.whole[job]
        else:
            size = (work.cpus[job], work.memory_gb[job])
            left = self._pending_sizes[size] - 1
            if left:
                self._pending_sizes[size] = left
            else:
                del self._pending_sizes[size]
        now = self.now
        self.start[job] = now
        cpus, mem = work.cpus[job], work.memory_gb[job]
        expected = work.expected[job]
        end_hint = now + (expected or 0.0)  # never the true duration: only what was known at arrival
        for node in nodes:
            if not node.jobs:
                node.jobs[job] = None
                node.busy_since = now
                self.idle_nodes.pop(node, None)
                self._show(node)
            else:
                self._count_free(node, -1)
            node.jobs[job] = None
            node.idle_since = None
            if whole_nodes:
                node.free_cpus, node.free_mem = 0.0, 0.0
            else:
                node.free_cpus -= cpus
                node.free_mem -= mem
            if end_hint > node.end_hint:
                node.end_hint = end_hint
            self._count_free(node, 1)
            node.measure()
        self.running[job] = nodes
        if self.run_watch is not None:
            self.run_watch.started(job, nodes)
        self._push(now + work.duration[job], COMPLETE, (job, self._version[job]))

    def _release(self, node: SimNode, job: int) -> None:
        del node.jobs[job]
        self._count_free(node, -1)
        if node.jobs:
            node.free_cpus += self.work.cpus[job]
            node.free_mem += self.work.memory_gb[job]
            work, start = self.work, self.start
            node.end_hint = max(start[j] + (work.expected[j] or 0.0) for j in node.jobs)
            self._count_free(node, 1)
        else:
            node.free_cpus, node.free_mem = self.shape.cpus, self.shape.memory_gb
            node.idle_since = self.now
            self.idle_nodes[node] = None
            self.busy_node_seconds += self.now - node.busy_since
            node.end_hint = 0.0
            self._show(node)
        node.measure()

    def _complete(self, job: int) -> None:
        for node in self.running.pop(job):
            self._release(node, job)
        if self.run_watch is not None:
            self.run_watch.ended(job)
        self._demand_cpus -= self.work.cpus[job]
        self.done += 1
        if self.timeline is not None and self.done % 16 == 0:
            self._mark()

    def _interrupt(self, node: SimNode) -> None:
        self.interruptions += 1
        if self.shape.fallback_price is not None:
            self._fallback_until = self.now + self.shape.fallback_window_s
        self.evict(node)
        self._drop(node)
        self._mark()
