"""The scaling policy: a pure function from (pool config, pool state, demand, now) to a plan.

No I/O happens here. The Dagster sensor, the run launcher and the simulator all call `plan_pool`,
so the rules below are tested once and measured everywhere.

Rules:
- demand is packed onto the pool's node shape (first-fit decreasing on CPU, then memory); a run
  larger than one node takes whole nodes;
- the wanted size is clamped to [min_size, max_size];
- scale up at once when the wanted size exceeds the current one;
- when it falls below a target that nodes have not filled yet, withdraw the unfilled part (down to
  the wanted size, never below the nodes that exist);
- scale down only by removing nodes that are not busy and have been idle for at least the idle
  timeout in force, longest idle first, never below the wanted size (so never below min_size);
- whatever the wanted size, remove (and so replace, if still wanted) a node that is not known busy
  and either has not been ready for the boot timeout (never joined, or cordoned by someone) or
  whose busy status has been unknown for the idle timeout plus `unknown_busy_grace_s`;
- a node the cloud is taking away (`Node.interrupted`) is no room: see `_around_interrupted`.

Optional knowledge, used when the caller has it (the defaults give the rules above unchanged):
- a run's `node_id` (the node it already holds): packing then starts from where runs really are,
  so a run that cannot fit in the room actually left gets a node even if a perfect repacking
  would not need one;
- the pool's recent `activity` (arrival rate, boot time), with `idle_timeout_mode: auto`: the
  idle timeouts in force are decided per plan (see `idle_timeouts`), never above `idle_timeout_s`;
  and with a wait target (`wait_target_s`), room that runs free within it (by `expected_end`) counts,
  taken in turn by waiting runs whose durations are known (`expected_s`; see `nodes_for`);
- a run's `expected_end`, for `place_run`: which node a run should go to so that nodes empty whole.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import cached_property
from operator import attrgetter
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from dpe_dagster.config import PoolConfig
from dpe_dagster.packing import SLACK, pack_by_size, whole_nodes as whole_nodes_of
from dpe_dagster.pools.base import (REMOVED_BOOT_TIMEOUT, REMOVED_BUSY_UNKNOWN, REMOVED_IDLE, REMOVED_INTERRUPTED, RUNNING,
                                    Node)


@dataclass(frozen=True)
class RunDemand:
    """One run that needs (or will need) room on a pool."""

    run_id: str
    cpus: float
    memory_gb: float
    node_id: str | None = None  # the node the run already holds; None: waiting, or not known
    expected_end: float | None = None  # when the run should end (unix s), from past runs of the same job
    upcoming: bool = False  # not a run yet: one that a schedule will start soon (pre-warming); no node
    # A pod the cluster's scheduler could not place on any of the pool's nodes, though it fits an
    # empty one: it asks for a node of its own (the safety net for room the model overstates); no node.
    stranded: bool = False
    wait_target_s: float | None = None  # how long this run may wait for room (None: its pool's)
    # How long the run should take once started (s), from past runs of the same job; None: not known.
    expected_s: float | None = None

    @cached_property
    def holds_room_s(self) -> float:
        """How long the run holds its room once started, as the queueing allowance counts it
        (`nodes_for`): `expected_s`, at least 1 s; not known: forever."""
        return math.inf if self.expected_s is None else max(self.expected_s, 1.0)


@dataclass(frozen=True)
class PoolActivity:
    """What the control loop saw of the pool lately."""

    cpu_arrival_rate: float  # CPUs asked per second by runs arriving lately (a decaying average)
    boot_s: float  # typical time from asking for a node to the node taking work
    # A waiting run may wait this long for room that running runs free (by their expected ends)
    # instead of a new node being booted for it (the pool's `wait_target_s`; a run's own
    # `wait_target_s` overrides it); 0: always boot at once.
    wait_target_s: float = 0.0
    # How often runs arrive (sensor ticks that saw new runs, per second: a burst counts once, however
    # many runs it holds); None: not known.
    arrivals_per_s: float | None = None


@dataclass(frozen=True)
class PoolState:
    target: int
    nodes: tuple[Node, ...]
    # When each idle node was first seen idle; a node missing here counts as idle since `now`.
    idle_since: Mapping[str, float] = field(default_factory=dict)
    activity: PoolActivity | None = None
    # Why the pool may not grow now (e.g. its daily budget is spent); None: it may.
    scale_up_blocked: str | None = None
    # Since when each node's busy status has been unknown; a node missing here: since `now`.
    unknown_since: Mapping[str, float] = field(default_factory=dict)
    # Since when each node that is not running has not been; missing: since its launch.
    not_ready_since: Mapping[str, float] = field(default_factory=dict)

    @cached_property
    def kinds(self) -> NodeKinds:
        """The nodes each rule reads, sorted out in one pass over the nodes, once per state."""
        idle, unsure, interrupted = [], [], []
        all_running = True
        for node in self.nodes:
            if node.busy and node.busy_known and not node.interrupted and node.state == RUNNING:
                continue  # busy and ready: the commonest node, and one that none of these lists holds
            running = node.state == RUNNING
            if not running:
                all_running = False
            busy = node.busy
            if not busy and running:
                idle.append(node)
            if node.interrupted:
                interrupted.append(node)
            elif not (busy or running) or not node.busy_known:
                unsure.append(node)
        return NodeKinds(tuple(idle), tuple(unsure), tuple(interrupted), all_running)


@dataclass(frozen=True)
class NodeKinds:
    """A pool state's nodes as the rules read them, each in the state's order."""

    idle: tuple[Node, ...]  # running and not busy: what the idle timeouts rank
    # Not cordoned, and not known busy or neither busy nor ready: what may get stuck (`_stuck_clocks`)
    unsure: tuple[Node, ...]
    interrupted: tuple[Node, ...]  # cordoned for the cloud's warning (`_around_interrupted`)
    all_running: bool  # every node listed is ready


@dataclass(frozen=True)
class Plan:
    target: int
    remove: tuple[str, ...]
    wanted: int
    reason: str
    idle_timeout_s: float | None = None  # the idle timeout in force when this plan was made
    # Why each node in `remove` goes (one of pools.base's REMOVED_* reasons).
    removed_because: Mapping[str, str] = field(default_factory=dict)

    def changes(self, state: PoolState) -> bool:
        return bool(self.remove) or self.target != state.target


def nodes_for(demand: Sequence[RunDemand], node_cpus: float, node_memory_gb: float,
              ending: tuple[float, float] | None = None, new_node_at: float = math.inf) -> int:
    """How many nodes of this shape hold the demand, packed first-fit decreasing. Runs that name
    the node they hold stay there; the others are packed into the room left, then onto new nodes.

    `ending` = (now, by): the queueing allowance. A placed run expected to end within [now, by]
    leaves its room to the waiting runs, since a node asked for now would not be ready sooner; not
    while a scheduled run is about to fire (an `upcoming` run): it must start on time, not bet on
    estimated ends. Waiting runs whose duration is known (`expected_s`) drain through that room in
    turn (`_drain`): a run that starts on freed room and ends before `by` frees it again, and a new
    node, taking work at `new_node_at`, holds one after another until `by`. Without known
    durations, each freed slot counts for one waiting run."""
    whole_nodes = 0
    unplaced: list[RunDemand] = []  # runs without a node
    sharing: list[RunDemand] = []  # placed runs that fit on one node (they may share it)
    whole_sizes: dict[tuple[float, float], int] = {}  # whole nodes a placed run of each size larger than a node takes
    for run in demand:  # the hot loop of a replay: one pass, no more work per run than needed
        if run.node_id is None:
            unplaced.append(run)
            continue
        cpus, memory = run.cpus, run.memory_gb
        if cpus <= node_cpus and memory <= node_memory_gb:  # (`whole_nodes_of`'s test, without a call)
            sharing.append(run)
            continue
        whole = whole_sizes.get((cpus, memory))  # a look-up is cheaper than the count
        if whole is None:
            whole = whole_sizes[cpus, memory] = whole_nodes_of(cpus, memory, node_cpus, node_memory_gb)
        whole_nodes += whole
    # The runs without a node by (cpus, memory), in their order; a look-up only where the size
    # changes from the run before (a burst's runs come together: hashing a size is the cost here).
    waiting: dict[tuple[float, float], list[RunDemand]] = defaultdict(list)
    group, last_cpus, last_memory = [], None, None
    for run in unplaced:
        cpus, memory = run.cpus, run.memory_gb
        if cpus != last_cpus or memory != last_memory:
            group, last_cpus, last_memory = waiting[cpus, memory], cpus, memory
        group.append(run)
    counts: dict[tuple[float, float], int] = {}  # waiting runs of each size that fits on one node
    for size, runs in list(waiting.items()):
        whole = whole_nodes_of(*size, node_cpus, node_memory_gb)
        if whole:
            whole_nodes += whole * len(runs)
            del waiting[size]
        else:
            counts[size] = len(runs)
    if not counts:  # no run waits for room on one node (most passes): the runs keep the nodes they hold
        return whole_nodes + len({run.node_id for run in sharing})
    placed: dict[str, list[float]] = {}  # [cpus, memory] left on each node that runs hold
    freeing = []  # (end, room, cpus, memory) of placed runs expected to end within `ending`
    lo, hi = ending if ending is not None else (math.inf, -math.inf)
    for run in sharing:
        node_id, cpus, memory = run.node_id, run.cpus, run.memory_gb
        room = placed.get(node_id)
        if room is None:
            room = placed[node_id] = [node_cpus, node_memory_gb]
        room[0] -= cpus
        room[1] -= memory
        end = run.expected_end
        if end is not None and lo <= end <= hi:
            freeing.append((end, room, cpus, memory))
    rooms = list(placed.values())
    if ending is not None and not any(run.upcoming for run in unplaced):
        if any(run.expected_s is not None for runs in waiting.values() for run in runs):
            counts = _drain(waiting, rooms, freeing, lo, hi, new_node_at)
        else:
            for _, room, cpus, memory in freeing:
                room[0] += cpus
                room[1] += memory
    return whole_nodes + len(placed) + pack_by_size(counts, rooms, node_cpus, node_memory_gb)


def _drain(waiting: Mapping[tuple[float, float], list[RunDemand]], rooms: list[list[float]],
           freeing: list[tuple[float, list[float], float, float]], now: float, by: float,
           new_node_at: float) -> dict[tuple[float, float], int]:
    """The waiting runs drained through the room that placed runs have and free within [now, by]
    (`rooms` updated in place), as the cluster would start them: each room, when it frees, takes
    the largest waiting runs that fit, the shortest of a size first; a run started at t that is
    expected to end by `by` frees its room again at its end. Returns what is left to pack onto new
    nodes, how many of each size, counted in the node slots they take: a new node's slot holds a
    run of duration d from `new_node_at`, then another each d until `by` (one when d is unknown)."""
    # Each size's durations, the shortest last (popped first). Only a run short enough to end within
    # the window makes the order matter (a new node's slot, from `new_node_at` >= now, is shorter
    # still): otherwise none is sorted.
    queues = {}
    for size, runs in waiting.items():
        durations = [run.holds_room_s for run in runs]
        if min(durations) <= by - now:
            durations.sort(reverse=True)
        queues[size] = durations
    sizes = sorted(queues, reverse=True)
    least_cpus, least_memory = min(cpus for cpus, _ in sizes), min(memory for _, memory in sizes)
    left = sum(map(len, queues.values()))  # waiting runs not drained yet
    events = [(end, i, room, cpus, memory) for i, (end, room, cpus, memory) in enumerate(freeing)]
    heapq.heapify(events)
    order = len(events)

    def fill(room: list[float], at: float) -> None:
        nonlocal order, left
        if room[0] + SLACK < least_cpus or room[1] + SLACK < least_memory:
            return  # no waiting run fits (most rooms, most of the time)
        for size in sizes:
            queue = queues[size]
            cpus, memory = size
            while queue and room[0] + SLACK >= cpus and room[1] + SLACK >= memory:
                duration = queue.pop()
                left -= 1
                room[0] -= cpus
                room[1] -= memory
                if at + duration <= by:
                    heapq.heappush(events, (at + duration, order, room, cpus, memory))
                    order += 1

    for room in rooms:
        fill(room, now)
    while events and left:
        at, _, room, cpus, memory = heapq.heappop(events)
        room[0] += cpus
        room[1] += memory
        fill(room, at)
    for _, _, room, cpus, memory in events:  # room freed within the window that no waiting run took
        room[0] += cpus
        room[1] += memory
    span = by - new_node_at

    def slots(queue: list[float]) -> float:  # (runs of a size share a few durations: each counted once)
        return sum(n / (1 + math.floor(span / d)) if span >= 0 and d != math.inf else n
                   for d, n in Counter(queue).items())

    return {size: math.ceil(slots(queue) - 1e-9) for size, queue in queues.items() if queue}


def idle_timeouts(pool: PoolConfig, state: PoolState) -> list[float]:
    """The idle timeouts in force, for the idle nodes ranked from the most recently idle (first)
    to the longest idle (last). `fixed` (or no activity known): the pool's `idle_timeout_s` for all.

    `auto`: an idle node is worth keeping only if the work arriving within a boot needs it. The
    k-th idle node is needed only if that work fills k nodes: its share is the work's CPUs
    (arrival rate * boot) / (node CPUs * k), and at most how many times work arrives within a boot
    (a burst of runs needs the node once, however many runs it holds). Each time, the node saves a
    paid boot and the part of the boot's wait beyond the wait target W (boot - W; none when
    W >= boot), a late second weighing boot / W seconds of node time: the shorter the target, the
    more a second past it costs. A node whose share of that is worth less than a boot goes at once.
    One that is worth it is kept for a boot when W covers a boot (the ski-rental rule: never more
    than twice the better choice made in hindsight), and longer the shorter W is, up to
    `idle_timeout_s` at W = 0: room is kept for the arrivals that would otherwise wait past the
    target. W is floored at 1 s where it divides."""
    return _timeouts(pool, state.activity, len(state.kinds.idle))


def _timeouts(pool: PoolConfig, activity: PoolActivity | None, idle_nodes: int) -> list[float]:
    """`idle_timeouts` for this many idle nodes and this activity."""
    if pool.idle_timeout_mode != "auto" or activity is None:
        return [pool.idle_timeout_s] * idle_nodes
    cap = pool.idle_timeout_s
    boot = max(0.0, activity.boot_s)
    if boot == 0:
        return [0.0] * idle_nodes  # a node comes at once: nothing to keep one for
    cpus_soon = max(0.0, activity.cpu_arrival_rate) * boot
    times_soon = math.inf if activity.arrivals_per_s is None else max(0.0, activity.arrivals_per_s) * boot
    late = max(0.0, boot - activity.wait_target_s)  # how much longer than the target a boot keeps a run waiting
    keep = min(cap, boot + max(0.0, cap - boot) * late / boot)
    saved = boot + late * boot / max(activity.wait_target_s, 1.0)  # what a node saves each time it is needed
    room = pool.room_cpus

    def worth_keeping(k: int) -> bool:
        return min(times_soon, cpus_soon / (room * k)) * saved >= boot

    # The k-th node's share falls as k grows, so the nodes worth keeping are the first `kept`: found
    # by bisection, with the same test for each k as a pass over all of them would make.
    kept, above = 0, idle_nodes + 1  # worth_keeping(kept) (or kept == 0); not worth_keeping(above) (or past the end)
    while above - kept > 1:
        mid = (kept + above) // 2
        if worth_keeping(mid):
            kept = mid
        else:
            above = mid
    return [keep] * kept + [0.0] * (idle_nodes - kept)


def idle_timeout(pool: PoolConfig, state: PoolState, timeouts: list[float] | None = None) -> float:
    """The longest idle timeout in force (the pool's when fixed); `timeouts`: what `idle_timeouts`
    gave for this state, when the caller has it already."""
    return max(idle_timeouts(pool, state) if timeouts is None else timeouts, default=pool.idle_timeout_s)


def idle_limits(pool: PoolConfig, state: PoolState, now: float,
                timeouts: list[float] | None = None) -> list[tuple[str, float, float]]:
    """The idle nodes (running, not busy) as the plan ranks them, with how long each has been idle
    and the idle timeout in force for it: (node id, idle seconds, timeout). Most recently idle
    first: it gets the longest timeout (`idle_timeouts`; `timeouts`: what it gave for this state,
    when the caller has it already), the longest idle the shortest."""
    since = state.idle_since.get
    idle_for = {node.id: now - since(node.id, now) for node in state.kinds.idle}
    ranked = sorted(idle_for, key=lambda node_id: (idle_for[node_id], node_id))
    if timeouts is None:
        timeouts = idle_timeouts(pool, state)
    return [(node_id, idle_for[node_id], limit) for node_id, limit in zip(ranked, timeouts)]


def _allowance(state: PoolState, demand: Sequence[RunDemand], now: float) -> tuple[float, float] | None:
    """The queueing allowance's window for `nodes_for`: room that running runs free within the
    wait target counts (the shortest target of the runs waiting for room: a run may set its own;
    a stranded pod asks for a node of its own and sets none); None: none."""
    activity = state.activity
    if activity is None:
        return None
    targets = {run.wait_target_s for run in demand if run.node_id is None and not run.stranded}
    target = min((activity.wait_target_s if t is None else t for t in targets), default=activity.wait_target_s)
    return (now, now + target) if target > 0 else None


def stuck_nodes(pool: PoolConfig, state: PoolState, now: float) -> dict[str, str]:
    """Node id -> why it goes whatever the demand: a node that is not known busy and has not been
    ready for the boot timeout, or whose busy status has been unknown for the idle timeout plus
    the grace. Unknown counts as busy for a while, not forever."""
    return {node_id: why for node_id, why, since, limit in _stuck_clocks(pool, state)
            if now - (now if since is None else since) >= limit}


def _stuck_clocks(pool: PoolConfig, state: PoolState) -> Iterator[tuple[str, str, float | None, float]]:
    """(node id, why, since when, for how long) of each node that goes whatever the demand once it
    has been so for that long; since None: since the time of the plan (the state does not say)."""
    for node in state.kinds.unsure:  # (none cordoned for the cloud's warning: see `_around_interrupted`)
        if not node.busy_known:  # whether it is ready is then no better known than whether it is busy
            yield (node.id, REMOVED_BUSY_UNKNOWN, state.unknown_since.get(node.id),
                   pool.idle_timeout_s + pool.unknown_busy_grace_s)
        else:  # neither busy nor ready
            yield (node.id, REMOVED_BOOT_TIMEOUT, state.not_ready_since.get(node.id, node.launched_at),
                   pool.boot_timeout_s)


def plan_pool(pool: PoolConfig, state: PoolState, demand: Sequence[RunDemand], now: float) -> Plan:
    stuck = stuck_nodes(pool, state, now)
    if not stuck:
        return _plan_pool(pool, state, demand, now)
    # The pool is planned as if the stuck nodes were gone already: what they were for is asked again.
    rest = _plan_pool(pool, *_without(state, demand, set(stuck)), now)
    counts = {why: sum(1 for w in stuck.values() if w == why) for why in sorted(set(stuck.values()))}
    said = {REMOVED_BOOT_TIMEOUT: f"not ready within the {pool.boot_timeout_s:g}s boot timeout",
            REMOVED_BUSY_UNKNOWN: f"busy status unknown for >= {pool.idle_timeout_s + pool.unknown_busy_grace_s:g}s "
                                  f"(idle timeout + unknown_busy_grace_s)"}
    why = "; ".join(f"remove {n} node(s) {said[w]}" for w, n in counts.items())
    return Plan(rest.target, (*sorted(stuck), *rest.remove), rest.wanted, f"{why}; then {rest.reason}",
                rest.idle_timeout_s, {**stuck, **rest.removed_because})


def _without(state: PoolState, demand: Sequence[RunDemand], gone: set[str]) -> tuple[PoolState, list[RunDemand]]:
    """The pool as if the `gone` nodes had left: fewer nodes and target, their runs waiting for room."""
    return (replace(state, target=max(0, state.target - len(gone)),
                    nodes=tuple(node for node in state.nodes if node.id not in gone)),
            [replace(run, node_id=None) if run.node_id in gone else run for run in demand])


def _plan_pool(pool: PoolConfig, state: PoolState, demand: Sequence[RunDemand], now: float) -> Plan:
    kinds = state.kinds
    if kinds.interrupted:
        return _around_interrupted(pool, state, demand, now)
    waiting = [run for run in demand if run.node_id is None]
    if (state.target > len(state.nodes) or not kinds.all_running) and any(map(attrgetter("stranded"), waiting)):
        # A node is on its way: a pod that found no room may be waiting for that one.
        demand = [run for run in demand if not run.stranded]
        waiting = [run for run in waiting if not run.stranded]
    needed = nodes_for(demand, pool.room_cpus, pool.room_memory_gb, _allowance(state, waiting, now),
                       now + state.activity.boot_s if state.activity is not None else math.inf)
    wanted = min(max(needed, pool.min_size), pool.max_size)
    current = max(state.target, len(state.nodes))
    capped = f" (capped at max_size {pool.max_size})" if needed > pool.max_size else ""
    timeouts = idle_timeouts(pool, state)
    timeout = idle_timeout(pool, state, timeouts)

    if wanted > current and state.scale_up_blocked:
        return Plan(state.target, (), wanted, f"held at {current} (want {wanted}): {state.scale_up_blocked}", timeout)
    if wanted > current:
        return Plan(
            target=wanted,
            remove=(),
            wanted=wanted,
            reason=f"scale up {current} -> {wanted}: {len(demand)} run(s) need {needed} node(s){capped}",
            idle_timeout_s=timeout,
        )
    if wanted == current:
        return Plan(state.target, (), wanted, f"steady at {current}: {len(demand)} run(s) need {needed} node(s){capped}",
                    timeout)

    expired = [node_id for node_id, idle, limit in sorted(idle_limits(pool, state, now, timeouts),
                                                          key=lambda n: (-n[1], n[0]))
               if idle >= limit]  # longest idle first
    # Capacity asked for that has no node yet and is no longer wanted is withdrawn, or it arrives
    # later for no run; nodes that exist go only by removal (idle ones, after their timeout).
    base = max(wanted, len(state.nodes)) if state.target > len(state.nodes) else current
    withdrawn = f"; withdraw {state.target - base} node(s) asked for and not launched" if base < state.target else ""
    remove = tuple(expired[: base - wanted])
    if not remove:
        if withdrawn:
            return Plan(base, (), wanted, f"scale down {current} -> {base}: {len(demand)} run(s) need {needed} "
                        f"node(s), {len(state.nodes)} exist{withdrawn}", timeout)
        return Plan(
            state.target, (), wanted,
            f"holding {current} (want {wanted}): no node idle for {timeout:g}s yet",
            timeout,
        )
    return Plan(
        target=base - len(remove),
        remove=remove,
        wanted=wanted,
        reason=f"scale down {current} -> {base - len(remove)}: {len(remove)} node(s) idle for "
        f">= {timeout:g}s, {len(demand)} run(s) need {needed} node(s){withdrawn}",
        idle_timeout_s=timeout,
        removed_because={node_id: REMOVED_IDLE for node_id in remove},
    )


def _around_interrupted(pool: PoolConfig, state: PoolState, demand: Sequence[RunDemand], now: float) -> Plan:
    """The plan when the cloud is taking nodes away (warned or advised to rebalance; they are cordoned).
    Such a node neither has room nor fills the target: the plan is made for the other nodes, with
    the runs on it counted as waiting (they need room elsewhere), and a busy one is kept on top
    until the cloud takes it (its run may still finish there). So the replacement asked for it is not
    withdrawn as capacity nodes have not filled. An idle one is removed now: it can take no work."""
    going = {node.id: node for node in state.kinds.interrupted}
    staying = sum(1 for node in going.values() if node.busy)
    drop = tuple(sorted(node_id for node_id, node in going.items() if not node.busy))
    plan = plan_pool(pool, *_without(state, demand, set(going)), now)
    remaining = len(state.nodes) - len(drop) - len(plan.remove)
    target = max(min(plan.target + staying, pool.max_size), remaining)
    kinds = ", ".join(sorted(f"{node_id} ({node.interrupted})" for node_id, node in going.items()))
    dropped = ", removing the idle one(s) now" if drop else ""
    return Plan(target, drop + plan.remove, plan.wanted + staying,
                f"{plan.reason}; {len(going)} node(s) going away, not counted as room: {kinds}{dropped}",
                plan.idle_timeout_s, {**{node_id: REMOVED_INTERRUPTED for node_id in drop}, **plan.removed_because})


def next_change(pool: PoolConfig, state: PoolState, demand: Sequence[RunDemand], now: float,
                activity_at: Callable[[float], PoolActivity | None],
                moment_at_or_after: Callable[[float], float] | None = None) -> float | None:
    """When time alone may next change the plan: the earliest time after `now` at which, with the
    same nodes and demand (no run arrives, starts or ends, no node comes or goes), `plan_pool` may
    plan otherwise than it does at `now`; None: time alone never changes it. `activity_at(t)`: the
    pool's activity at a later time t if no run arrives (the idle timeouts follow it). A caller
    that plans only at some moments (a sensor, at its ticks) passes `moment_at_or_after` (the first
    of them at or after a time): the answer is then the first such moment. Every idle node is taken
    to have its `idle_since`, as the sensor gives them (one missing is idle since each plan's time).

    Time changes the plan when a node becomes stuck (`stuck_nodes`), when an idle node's timeout
    runs out (`idle_limits`; a node already past it is held by the demand or min_size, which only
    an event changes), and, while runs wait for room under a queueing allowance, when a running
    run's expected end enters or leaves the allowance (`_allowance`)."""
    moment = moment_at_or_after or (lambda t: t)
    soonest = moment(math.nextafter(now, math.inf))
    stuck, changes = set(), []
    for node_id, _, since, limit in _stuck_clocks(pool, state):
        if since is None:
            continue  # since each plan's time: never stuck
        if now - since >= limit:
            stuck.add(node_id)
        else:
            changes.append(since + limit)
    # The pool and demand `_plan_pool` plans for in the end: without the nodes that go whatever the
    # demand (stuck, or going away), whose runs wait for room (see `plan_pool`, `_around_interrupted`).
    gone = stuck.union(node.id for node in state.kinds.interrupted)
    if gone:
        state, demand = _without(state, demand, gone)
    window = _allowance(state, demand, now)
    ending = None if window is None else _allowance_change(pool, demand, window)
    if ending is not None:
        changes.append(ending)
    first = min((moment(max(t, soonest)) for t in changes), default=None)
    expiry = _first_expiry(pool, state, now, activity_at, moment, soonest)
    return min((t for t in (first, expiry) if t is not None), default=None)


def _allowance_change(pool: PoolConfig, demand: Sequence[RunDemand], window: tuple[float, float]) -> float | None:
    """The first time a running run's expected end enters or leaves the queueing allowance's
    `window` (at once while waiting runs drain through room, see `nodes_for`). None while no run
    waits for room on one node, or while a scheduled run is about to fire: `nodes_for` then has no
    use for the room they free."""
    def one_node(run: RunDemand) -> bool:
        return not whole_nodes_of(run.cpus, run.memory_gb, pool.room_cpus, pool.room_memory_gb)

    waiting = [run for run in demand if run.node_id is None and one_node(run)]
    if not waiting or any(run.upcoming for run in demand):
        return None
    lo, hi = window
    if min(run.holds_room_s for run in waiting) <= hi - lo:
        # A waiting run can start and end within the window, freeing its room again (`_drain`): when
        # such a run's end enters the window depends on the whole chain, so the plan may change at
        # any moment. (Runs longer than the window take freed room once, as the rule below sees.)
        return math.nextafter(lo, math.inf)
    first = math.inf
    for run in demand:
        end = run.expected_end
        if run.node_id is None or end is None or end < lo:
            continue
        change = end - (hi - lo) if end > hi else math.nextafter(end, math.inf)  # enters, or leaves
        if change < first and one_node(run):
            first = change
    return None if first == math.inf else first


def _first_expiry(pool: PoolConfig, state: PoolState, now: float, activity_at: Callable[[float], PoolActivity | None],
                  moment: Callable[[float], float], soonest: float) -> float | None:
    """The first moment from `soonest` at which an idle node not yet past its idle timeout at `now`
    is past it, with the timeouts in force then, by the nodes' ranks (found by bisection: the
    timeouts shrink as the arrival rate decays); None: no such node."""
    if not state.idle_since:  # no node has an idle clock running (a busy pool, most ticks)
        return None
    ranked = idle_limits(pool, state, now)
    waiting = [(rank, state.idle_since[node_id]) for rank, (node_id, idle, limit) in enumerate(ranked)
               if idle < limit and node_id in state.idle_since]
    if not waiting:
        return None
    idle_nodes = len(ranked)

    def limits_at(t: float) -> list[float]:
        return _timeouts(pool, activity_at(t), idle_nodes)

    def expired(t: float, limits: list[float]) -> bool:
        return any(t - since >= limits[rank] for rank, since in waiting)

    lo = soonest
    limits = limits_at(lo)
    if expired(lo, limits):
        return lo
    hi = moment(max(lo, min(since + limits[rank] for rank, since in waiting)))
    while True:  # not expired at lo; expired at hi, unless the timeouts grew meanwhile (then hi is a guess)
        mid = moment(lo + (hi - lo) / 2)
        if not lo < mid < hi:
            return hi
        if expired(mid, limits_at(mid)):
            hi = mid
        else:
            lo = mid


@dataclass(frozen=True)
class NodeRoom:
    """A ready node as `place_run` sees it."""

    node_id: str
    free_cpus: float
    free_memory_gb: float
    busy_until: float | None  # latest expected end of the runs on it; None: empty


def extension_class(seconds: float) -> int:
    """How much a run lengthens a node's paid time, in powers of two of minutes (0: not at all).
    Expected ends are rough (past runs of the same job, or the time it asked for, often off by 2x),
    so finer differences than that are noise, not knowledge."""
    return round(math.log2(1.0 + max(0.0, seconds) / 60.0))


def place_run(run: RunDemand, nodes: Iterable[NodeRoom], now: float) -> str | None:
    """The node a waiting run should go to, among those with room (None: no room anywhere).
    `nodes` are listed oldest first.

    With an expected end, the node whose paid time the run extends least (`extension_class`): a run
    that ends before a node's other runs costs nothing there, a run on an empty node costs its
    whole length. Among equals, the oldest node: a node that has lived long holds long runs and is
    the likeliest to outlive the estimate. So runs that end together share nodes and young nodes
    empty whole. Without an expected end, the first (oldest) node with room."""
    best, best_class = None, None
    for room in nodes:
        if room.free_cpus < run.cpus or room.free_memory_gb < run.memory_gb:
            continue
        if run.expected_end is None:
            return room.node_id
        end = max(run.expected_end, now)
        node_end = now if room.busy_until is None else max(room.busy_until, now)
        lengthens = extension_class(end - node_end)
        if best_class is None or lengthens < best_class:
            best, best_class = room.node_id, lengthens
            if lengthens == 0:
                break
    return best
