"""A node pool backed by an AWS Auto Scaling Group, through boto3.

The group is the source of truth: its desired capacity is the pool's target, its instances (joined
with EC2's view of them) are the pool's nodes. dpe only ever:

- raises the desired capacity (`SetDesiredCapacity`, `HonorCooldown=False`), clamped by dpe itself
  to the group's MinSize/MaxSize as AWS reports them (AWS rejects a value outside them; an
  emulator may not, so the clamp must not depend on the server); lowers it only to withdraw
  capacity not launched yet, never below the instances that exist;
- reads EC2's view of the instances by id, and by an `instance-id` filter when EC2 answers
  InvalidInstanceID.NotFound (it fails the whole call for an instance launched seconds ago);
- removes chosen idle instances (`TerminateInstanceInAutoScalingGroup` with
  `ShouldDecrementDesiredCapacity=True`), never lowers the desired capacity to let AWS choose;
- keeps busy instances protected from scale-in (`SetInstanceProtection`), so that nothing else
  that shrinks the group (an operator, AZ rebalancing of a lowered desired size) picks them.

A scale-up that does not arrive within the pool's boot timeout is reported by `scale_up_health`;
`back_off` records that on the group itself (as group tags, visible to every dpe process) so the
launcher places runs on the pool's fallback pool until the back-off expires.

Credentials come only from the standard AWS chain (environment, shared files, SSO, the container
or instance role); dpe's configuration holds the region, an optional endpoint, and retry settings.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from pydantic import Field

from dpe_dagster.config import Checked, Choice, ConfigModel, Environment, Number, PoolConfig, validated
from dpe_dagster.errors import PoolBusy
from dpe_dagster.pools.base import INTERRUPTIONS, PENDING, RUNNING, Node, PoolError
from dpe_dagster.pools.health import MARKS, MarkedHealth, float_or_none
from dpe_dagster.pools.removal import SafeRemoval
from dpe_dagster.pools.aws.tags import INSTANCE_INTERRUPTED_TAG, MARK_PREFIX

log = logging.getLogger("dpe.pools.aws_asg")

BUSY_SOURCES = ("kubernetes", "dagster_runs")
RETRY_MODES = ("standard", "adaptive")
# ASG lifecycle states in which an instance is on its way out (or parked): not a node.
_GONE_STATES = ("Terminating", "Terminated", "Detaching", "Detached", "Warmed")
_LIVE_EC2_STATES = ("pending", "running")
_BATCH = 50  # SetInstanceProtection takes at most 50 instance ids
# What Auto Scaling answers while another activity on the group is under way (SetDesiredCapacity,
# TerminateInstanceInAutoScalingGroup under load): it clears in seconds, botocore's retry modes do
# not retry it, and it says nothing about capacity. Retried after these pauses, then PoolBusy.
CONTENTION = ("ScalingActivityInProgress", "ResourceContention")
CONTENTION_PAUSES_S = (0.5, 1.0, 2.0, 4.0)
# Auto Scaling's processes that would resize the group or pick instances to terminate behind dpe's
# back (rebalancing zones, alarms' and schedules' scaling): dpe suspends them on each group it looks at.
OWNED_PROCESSES = ("AZRebalance", "AlarmNotification", "ScheduledActions")


# -- configuration ---------------------------------------------------------------------------
class AwsSettings(ConfigModel):
    """Per-environment AWS settings (`aws:` in the environment)."""

    region: Checked(str, lambda value: isinstance(value, str) and bool(value), "an AWS region name like 'us-east-1'",
                    min_length=1)
    endpoint_url: Checked(Optional[str], lambda value: value is None or (
        isinstance(value, str) and urlparse(value).scheme in ("http", "https")), "an http(s) URL",
        description="an endpoint other than AWS's own (default: AWS_ENDPOINT_URL, else AWS)") = None
    retry_mode: Choice(RETRY_MODES) = "standard"
    max_attempts: Number(ge=1, le=20, integer=True) = 8
    # The environment talks only to an AWS emulator on loopback (aws-sim): refuse anything else.
    emulator: Checked(bool, lambda value: isinstance(value, bool), "true or false") = False
    # Read and validated where the queue is read (pools/aws/interruptions.py).
    interruption_queue_url: Optional[str] = Field(None, description="the SQS queue `dpe interruptions` reads")

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "AwsSettings":
        return validated(cls, dict(raw), ("aws",))


class AsgSettings(ConfigModel):
    """Per-pool settings (`pools.<name>.settings` for provider `aws_asg`)."""

    group_name: Checked(str, lambda value: isinstance(value, str) and 1 <= len(value) <= 255 and not any(
        c in value for c in ":\n"), "the Auto Scaling group's name (1-255 characters, no ':')", min_length=1,
        max_length=255)
    busy_source: Choice(BUSY_SOURCES) = "kubernetes"
    # The instance types the group may launch; the emulator creates the group with them, in AWS the
    # group's MixedInstancesPolicy (deploy/) is the truth and this is documentation.
    instance_types: Checked(tuple[str, ...], lambda value: isinstance(value, (list, tuple)) and all(
        isinstance(t, str) and "." in t for t in value), "a list of EC2 instance types like ['m6i.large', "
        "'m5.large']") = ()

    @classmethod
    def parse(cls, pool_name: str, raw: Mapping[str, Any]) -> "AsgSettings":
        return validated(cls, dict(raw), ("pools", pool_name, "settings"))


def _is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


# How old a handed-over group description may be when a look uses it: one tick's worth.
VIEW_MAX_AGE_S = 5.0
# DescribeAutoScalingGroups names at most this many groups per call (with MaxRecords at its maximum).
GROUPS_PER_CALL = 100


def describe_groups(pools: Sequence["AwsAsgPool"]) -> None:
    """Describe the groups of many pools with one DescribeAutoScalingGroups call per 100 groups
    (instead of one or two per pool), and their instances at once (`_describe_instances_at_once`),
    and hand each pool its group and EC2's view of it for its next look. Pools that share clients
    are asked together. A failed call only means the pools ask for themselves, as without a look-ahead: it is
    logged, not raised."""
    by_clients: dict[int, list[AwsAsgPool]] = {}
    for pool in pools:
        by_clients.setdefault(id(pool.autoscaling), []).append(pool)
    for members in by_clients.values():
        by_group = {pool.settings.group_name: pool for pool in members}
        names = list(by_group)
        for start in range(0, len(names), GROUPS_PER_CALL):
            chunk, token = names[start:start + GROUPS_PER_CALL], None
            try:
                while True:
                    kwargs = {"AutoScalingGroupNames": chunk, "MaxRecords": GROUPS_PER_CALL}
                    if token:
                        kwargs["NextToken"] = token
                    response = members[0]._call("DescribeAutoScalingGroups",
                                                members[0].autoscaling.describe_auto_scaling_groups, **kwargs)
                    seen = time.monotonic()
                    for group in response.get("AutoScalingGroups", []):
                        if group.get("AutoScalingGroupName") in by_group:
                            by_group[group["AutoScalingGroupName"]]._view = (group, seen)
                    token = response.get("NextToken")
                    if not token:
                        break
            except PoolError as error:
                log.warning("describing %d group(s) at once failed; each pool asks for itself: %s", len(chunk), error)
        described = [pool for pool in members if pool._view is not None]
        if len(described) < 3:
            continue  # one DescribeInstances by id per pool costs no more than the two or three calls below
        try:
            _describe_instances_at_once(described)
        except PoolError as error:
            log.warning("describing the instances of %d group(s) at once failed; each pool asks for itself: %s",
                        len(members), error)


# EC2 states in which an instance is not a node (any more): few, so a tick asks for all of them.
_NOT_LIVE_EC2_STATES = ("shutting-down", "terminated", "stopping", "stopped")
# A filter takes at most this many values.
_FILTER_VALUES = 200


def _pages(pool: "AwsAsgPool", what: str, call: Callable[..., Any], **kwargs: Any) -> list[dict]:
    pages, token = [], None
    while True:
        pages.append(pool._call(what, call, **({**kwargs, "NextToken": token} if token else kwargs)))
        token = pages[-1].get("NextToken")
        if not token:
            return pages


def _describe_instances_at_once(pools: Sequence["AwsAsgPool"]) -> None:
    """EC2's view of every instance of these pools' groups, for their next look, asking EC2 only
    what may have changed since the pools last saw their instances: instances not yet seen
    running, those no longer live (one call for all, by state), and the interruption marks (one
    call for all). An instance's type, lifecycle, zone and launch time never change; its state is
    read again each tick among the few that are not running."""
    if not pools:
        return
    asking = pools[0]
    names = [pool.settings.group_name for pool in pools]
    not_live: dict[str, dict] = {}
    for start in range(0, len(names), _FILTER_VALUES):
        for page in _pages(asking, "DescribeInstances", asking.ec2.describe_instances, Filters=[
                {"Name": "tag:aws:autoscaling:groupName", "Values": names[start:start + _FILTER_VALUES]},
                {"Name": "instance-state-name", "Values": list(_NOT_LIVE_EC2_STATES)}]):
            for reservation in page.get("Reservations", []):
                not_live.update((inst["InstanceId"], inst) for inst in reservation.get("Instances", []))
    marks = {tag["ResourceId"]: tag for page in _pages(
        asking, "DescribeTags", asking.ec2.describe_tags,
        Filters=[{"Name": "key", "Values": [INSTANCE_INTERRUPTED_TAG]}, {"Name": "resource-type", "Values": ["instance"]}])
        for tag in page.get("Tags", [])}
    members = {pool.name: [m["InstanceId"] for m in pool._view[0].get("Instances", [])] for pool in pools}
    unknown = [iid for pool in pools for iid in members[pool.name] if iid not in not_live and iid not in pool._ec2_seen]
    fresh = asking._ec2_view(unknown) if unknown else {}
    now = time.monotonic()
    for pool in pools:
        view = {}
        for iid in members[pool.name]:
            described = not_live.get(iid) or fresh.get(iid) or pool._ec2_seen.get(iid)
            if described is None:
                continue  # EC2 does not list it yet
            described = {**described, "Tags": [{"Key": INSTANCE_INTERRUPTED_TAG, "Value": marks[iid]["Value"]}]
                         if iid in marks else []}
            view[iid] = described
        pool._ec2_seen = {iid: d for iid, d in view.items() if d.get("State", {}).get("Name") == "running"}
        pool._ec2_handed = (view, pool._view[0], now)


def make_clients(aws: AwsSettings) -> tuple[Any, Any]:
    """(autoscaling, ec2) clients with botocore's own retry modes for throttling and 5xx, shared
    within a process: building a session and two clients costs most of a launch's own time
    (bench/RESULTS.md, "1. Reaction latency: run enqueued -> scale-up call received by the cloud API").
    The AWS_* environment is part of the key, so a changed endpoint or credentials source gets new
    clients; botocore refreshes expiring credentials itself."""
    aws_environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _clients(aws, aws_environment)


@lru_cache(maxsize=32)
def _clients(aws: AwsSettings, aws_environment: tuple) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=aws.region,
        retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},  # first try included
        connect_timeout=10,
        read_timeout=30,
        user_agent_extra="dpe",
    )
    session = boto3.session.Session()
    # endpoint_url=None lets botocore use AWS_ENDPOINT_URL / the config file, or the real endpoint.
    kwargs = {"config": config, "endpoint_url": aws.endpoint_url}
    return session.client("autoscaling", **kwargs), session.client("ec2", **kwargs)


# A Kubernetes Node's spec.providerID on EKS: aws:///<zone>/<instance id>.
PROVIDER_ID = re.compile(r"^aws:///(?P<zone>[^/]*)/(?P<instance>i-[0-9a-f]+)$")


def instance_id(provider_id: str | None) -> str | None:
    """The EC2 instance id in a Kubernetes node's providerID, or None for another provider's node."""
    match = PROVIDER_ID.match(provider_id or "")
    return match.group("instance") if match else None


def node_instance_id(node: Mapping[str, Any]) -> str | None:
    """The EC2 instance a Kubernetes Node (the API's object) is, from its providerID."""
    return instance_id((node.get("spec") or {}).get("providerID"))


# -- the pool --------------------------------------------------------------------------------
BusyLookup = Callable[..., dict[str, tuple[bool, bool]]]  # (instances, fresh=False)
RunLookup = Callable[[Sequence["_Instance"]], dict[str, str]]


@dataclass(frozen=True)
class _Instance:
    id: str
    lifecycle_state: str  # the ASG's view
    ec2_state: str | None  # EC2's view; None while EC2 does not list it yet
    zone: str
    instance_type: str
    lifecycle: str
    launched_at: float
    protected: bool
    interrupted: tuple[str, float | None] = ("", None)  # from INSTANCE_INTERRUPTED_TAG


class AwsAsgPool(SafeRemoval, MarkedHealth):
    """A `NodePool` whose nodes are the instances of one Auto Scaling group."""

    def __init__(self, config: PoolConfig, settings: AsgSettings, aws: AwsSettings, autoscaling: Any, ec2: Any,
                 busy_lookup: BusyLookup | None = None, cordon: Callable[..., Any] | None = None,
                 run_lookup: RunLookup | None = None, drain: Callable[[Sequence[str]], Any] | None = None):
        # busy_lookup(instances, fresh=False) -> {id: (ready to take work, busy)}, `fresh` read at
        # the moment of a removal; cordon(instance_ids, cordoned=True) marks the matching Kubernetes
        # nodes (un)schedulable; drain(instance_ids) evicts what may move off them (pods that are
        # not work, kube/nodes.py); run_lookup: instances -> {run id: instance id it holds}. All
        # come from the pool's busy_source.
        self.name = config.name
        self.config = config
        self.settings = settings
        self.aws = aws
        self.autoscaling = autoscaling
        self.ec2 = ec2
        self._busy_lookup = busy_lookup
        self._cordon = cordon
        self._run_lookup = run_lookup
        self._drain = drain
        self._stranded_lookup: Callable[[], list[tuple[str, float, float]]] | None = None
        # (group, monotonic time): a group description the next look may use instead of asking
        # again; see describe_groups and _group_for_look.
        self._view: tuple[dict, float] | None = None
        self._described: tuple[dict, list[_Instance]] | None = None  # a group description, EC2's view of it
        # EC2's descriptions of the instances last seen running, and EC2's view of a group handed
        # over by describe_groups for the next look: (view, that group description, monotonic time).
        self._ec2_seen: dict[str, dict] = {}
        self._ec2_handed: tuple[dict[str, dict], dict, float] | None = None
        self._removing: list[_Instance] = []  # the members a removal under way judges busy-ness over

    @classmethod
    def from_config(cls, pool: PoolConfig, env: Environment) -> "AwsAsgPool":
        settings = AsgSettings.parse(pool.name, dict(pool.settings))
        aws = AwsSettings.parse(dict(env.block("aws")))
        autoscaling, ec2 = make_clients(aws)
        pool_obj = cls(pool, settings, aws, autoscaling, ec2)
        if settings.busy_source == "kubernetes":
            from dpe_dagster.kube.nodes import KubeNodes

            kube = KubeNodes.from_environment(pool.labels, node_instance_id)
            pool_obj._busy_lookup = lambda instances, fresh=False: kube.busy_by_instance(
                [i.id for i in instances], fresh)
            pool_obj._cordon = kube.cordon_instances
            pool_obj._drain = kube.evict
            from dpe_dagster.pools.aws.eks import node_labels

            pool_obj._stranded_lookup = lambda: kube.stranded(
                node_labels(pool), [(t.key, t.value, t.effect) for t in pool.taints], pool.room_cpus,
                pool.room_memory_gb)
            pool_obj._run_lookup = lambda instances: kube.run_instances([i.id for i in instances])
        else:
            from dpe_dagster.pools.run_model import runs_on_nodes

            pool_obj._busy_lookup = lambda instances, fresh=False: busy_from_dagster_runs(pool, instances)
            pool_obj._run_lookup = lambda instances: runs_on_nodes(pool, _serving_nodes(instances))
        return pool_obj

    # -- AWS calls ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        if not what.startswith("Describe"):
            # Something changes: a group description handed over for the next look is stale now.
            self._view = self._described = self._ec2_handed = None
        # Checked at each call, not when the pool object is made: building it must not fail
        # (cleanup code opens every pool), sending anything off loopback must.
        if self.aws.emulator and not _is_loopback_url(self.aws.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")):
            raise PoolError(
                f"pool {self.name}: this environment talks only to an AWS emulator on loopback, and AWS_ENDPOINT_URL "
                f"is {os.environ.get('AWS_ENDPOINT_URL')!r}: run it through `dpe demo`, which starts the emulator"
            )
        pauses = list(CONTENTION_PAUSES_S)
        while True:
            try:
                return self._call_once(what, fn, kwargs)
            except PoolBusy:
                if not pauses:
                    raise
                time.sleep(pauses.pop(0))

    def _call_once(self, what: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except NoCredentialsError:
            raise PoolError(
                f"pool {self.name}: {what}: no AWS credentials found in the standard chain (environment variables, "
                "shared credentials/config files, SSO, the container or instance role)"
            ) from None
        except ClientError as error:
            info = error.response.get("Error", {})
            attempts = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            kind = PoolBusy if info.get("Code") in CONTENTION else PoolError
            raise kind(
                f"pool {self.name}: {what} on group {self.settings.group_name!r} failed: "
                f"{info.get('Code', '?')}: {info.get('Message', '')} (after {attempts + 1} attempt(s))"
            ) from error
        except BotoCoreError as error:
            raise PoolError(f"pool {self.name}: {what} on group {self.settings.group_name!r} failed: {error}") from error

    def _group(self) -> dict:
        response = self._call(
            "DescribeAutoScalingGroups", self.autoscaling.describe_auto_scaling_groups,
            AutoScalingGroupNames=[self.settings.group_name],
        )
        groups = response.get("AutoScalingGroups", [])
        if not groups:
            raise PoolError(
                f"pools.{self.name}.settings.group_name: Auto Scaling group {self.settings.group_name!r} "
                f"does not exist in region {self.aws.region}"
            )
        return groups[0]

    def _group_for_look(self) -> dict:
        """The group for a read (`nodes`, then `target`): the description handed over by
        describe_groups or by the `nodes()` just before, used once and only while fresh; otherwise
        asked afresh. Anything that acts (set_target, remove_nodes) always asks afresh."""
        view, self._view = self._view, None
        if view is not None and time.monotonic() - view[1] <= VIEW_MAX_AGE_S:
            return view[0]
        return self._group()

    def _ec2_view(self, ids: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for start in range(0, len(ids), 100):
            chunk = list(ids[start:start + 100])
            try:
                pages = [self._call("DescribeInstances", self.ec2.describe_instances, InstanceIds=chunk)]
            except PoolError as error:
                if _error_code(error) != "InvalidInstanceID.NotFound":
                    raise
                # Real EC2 fails the whole call when one id is not listed yet (an instance launched
                # seconds ago). A filter on the same ids lists those EC2 knows and skips the rest;
                # the others stay nodes on their way (ec2_state None).
                log.info("pool %s: EC2 does not list some of %d instance(s) yet; describing by filter",
                         self.name, len(chunk))
                pages, token = [], None
                while True:
                    kwargs: dict[str, Any] = {"Filters": [{"Name": "instance-id", "Values": chunk}]}
                    if token:
                        kwargs["NextToken"] = token
                    pages.append(self._call("DescribeInstances", self.ec2.describe_instances, **kwargs))
                    token = pages[-1].get("NextToken")
                    if not token:
                        break
            for response in pages:
                for reservation in response.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        found[inst["InstanceId"]] = inst
        return found

    def _instances(self, group: dict) -> list[_Instance]:
        # One look (run_nodes, then nodes) reads EC2 once: the same group description, the same answer.
        if self._described is not None and self._described[0] is group:
            return self._described[1]
        instances = self._describe_instances(group)
        self._described = (group, instances)
        return instances

    def _describe_instances(self, group: dict) -> list[_Instance]:
        members = group.get("Instances", [])
        handed, self._ec2_handed = self._ec2_handed, None
        if handed is not None and handed[1] is group and time.monotonic() - handed[2] <= VIEW_MAX_AGE_S:
            ec2 = handed[0]  # the tick's look-ahead read EC2 for every pool at once
        else:
            ec2 = self._ec2_view([m["InstanceId"] for m in members]) if members else {}
        out = []
        for member in members:
            described = ec2.get(member["InstanceId"], {})
            launch = described.get("LaunchTime")
            out.append(_Instance(
                id=member["InstanceId"],
                lifecycle_state=member.get("LifecycleState", ""),
                ec2_state=described.get("State", {}).get("Name") if described else None,
                zone=member.get("AvailabilityZone", ""),
                instance_type=described.get("InstanceType") or member.get("InstanceType", "unknown"),
                lifecycle="spot" if described.get("InstanceLifecycle") == "spot" else "on-demand",
                launched_at=launch.timestamp() if launch is not None else time.time(),
                protected=bool(member.get("ProtectedFromScaleIn")),
                interrupted=_interruption(described.get("Tags", [])),
            ))
        return out

    @staticmethod
    def _alive(inst: _Instance) -> bool:
        if inst.lifecycle_state.startswith(_GONE_STATES):
            return False
        return inst.ec2_state is None or inst.ec2_state in _LIVE_EC2_STATES

    @staticmethod
    def _serving(inst: _Instance) -> bool:
        return inst.lifecycle_state == "InService" and inst.ec2_state == "running"

    # -- NodePool -----------------------------------------------------------------------------
    def target(self) -> int:
        return int(self._group_for_look()["DesiredCapacity"])

    def set_target(self, size: int) -> None:
        group = self._group()
        low, high, desired = int(group["MinSize"]), int(group["MaxSize"]), int(group["DesiredCapacity"])
        wanted = min(max(int(size), low), high)
        if wanted != size:
            log.info("pool %s: asked for %d node(s); group %s allows %d..%d, asking for %d",
                     self.name, size, self.settings.group_name, low, high, wanted)
        if wanted < desired:
            # Withdraw capacity AWS has not launched yet, never below the instances that exist:
            # those go through remove_nodes, which picks them (busy ones are also protected).
            existing = sum(1 for inst in self._instances(group) if self._alive(inst))
            keep = max(wanted, existing)
            if keep < desired:
                log.info("pool %s: withdrawing %d unlaunched node(s) from group %s (%d -> %d, %d instance(s))",
                         self.name, desired - keep, self.settings.group_name, desired, keep, existing)
                self._call("SetDesiredCapacity", self.autoscaling.set_desired_capacity,
                           AutoScalingGroupName=self.settings.group_name, DesiredCapacity=keep, HonorCooldown=False)
            return
        if wanted == desired or not self.may_scale_up(_marks(group)):
            return
        self._call("SetDesiredCapacity", self.autoscaling.set_desired_capacity,
                   AutoScalingGroupName=self.settings.group_name, DesiredCapacity=wanted, HonorCooldown=False)
        self.scale_up_asked(_marks(group))

    def nodes(self) -> list[Node]:
        group = self._group_for_look()
        alive = [inst for inst in self._instances(group) if self._alive(inst)]
        busy = self._busy(alive)
        nodes = []
        for inst in alive:
            serving, is_busy = busy.get(inst.id, (self._serving(inst), None))
            nodes.append(Node(
                id=inst.id,
                state=RUNNING if serving and self._serving(inst) else PENDING,
                launched_at=inst.launched_at,
                busy=is_busy is not False,
                busy_known=is_busy is not None,
                lifecycle=inst.lifecycle,
                instance_type=inst.instance_type,
                zone=inst.zone,
                interrupted=inst.interrupted[0],
                interrupted_at=inst.interrupted[1],
            ))
        self._sync_protection(alive, {n.id for n in nodes if n.busy})
        self._own_processes(group)
        self.scale_up_arrived(_marks(group), sum(n.state == RUNNING for n in nodes), int(group["DesiredCapacity"]))
        # One look reads the group once: the target() that follows uses this same description.
        self._view = (group, time.monotonic())
        return nodes

    def run_nodes(self) -> dict[str, str]:
        """From the busy source (Kubernetes: the nodes of the runs' pods; aws-sim: the emulator's
        model). Reads the group like a look does, and hands the description on to the `nodes()`
        and `target()` that follow, so knowing the runs' nodes costs no extra group description.
        A lookup that fails means no run is known to hold a node: the policy packs those runs as
        it did before it knew (it may ask for fewer nodes this tick than where the runs really are
        needs; busy-ness comes from `nodes()`, so no busy node is ever removed for it)."""
        group = self._group_for_look()
        self._view = (group, time.monotonic())
        alive = [inst for inst in self._instances(group) if self._alive(inst)]
        if not alive or self._run_lookup is None:
            return {}
        try:
            placed = self._run_lookup(alive)
        except Exception as error:  # another system; its failure must not fail the tick
            log.warning("pool %s: cannot tell which nodes the runs hold (%s); packing without it", self.name, error)
            return {}
        ids = {inst.id for inst in alive}
        return {run_id: node_id for run_id, node_id in placed.items() if node_id in ids}

    # -- removal: the primitives of pools/removal.py's sequence ----------------------------------
    @property
    def cordons(self) -> bool:
        return self._cordon is not None

    def removal_members(self) -> tuple[list[str], int, int]:
        group = self._group()
        self._removing = [inst for inst in self._instances(group) if self._alive(inst)]
        return [inst.id for inst in self._removing], int(group["DesiredCapacity"]), int(group["MinSize"])

    def busy_now(self, node_ids: Sequence[str]) -> dict[str, bool | None]:
        # Busy-ness is judged over the whole group (a run placed on one instance is not on another).
        members = [inst for inst in self._removing if inst.id in set(node_ids)]
        return {node_id: state[1] for node_id, state in self._busy(members, fresh=True).items()}

    def cordon(self, node_ids: Sequence[str], cordoned: bool = True) -> None:
        self._cordon(node_ids, cordoned)

    def drain(self, node_ids: Sequence[str]) -> None:
        if self._drain is not None:
            self._drain(node_ids)

    def terminate(self, node_id: str, lower_target: bool) -> None:
        self._call("TerminateInstanceInAutoScalingGroup", self.autoscaling.terminate_instance_in_auto_scaling_group,
                   InstanceId=node_id, ShouldDecrementDesiredCapacity=lower_target)

    def stranded_pods(self) -> list[tuple[str, float, float]]:
        if self._stranded_lookup is None:
            return []
        try:
            return self._stranded_lookup()
        except Exception as error:  # another system; its failure must not fail the tick
            log.warning("pool %s: cannot tell which pods found no room (%s)", self.name, error)
            return []

    def mark_interrupted(self, node_id: str, kind: str, at: float) -> None:
        """Say on the instance that EC2 is taking it away (`kind`, one of INTERRUPTIONS, warned at
        `at`): every dpe process then sees the node as going (`Node.interrupted`)."""
        if kind not in INTERRUPTIONS:
            raise ValueError(f"kind: must be one of {', '.join(INTERRUPTIONS)}; got {kind!r}")
        self._call("CreateTags", self.ec2.create_tags, Resources=[node_id],
                   Tags=[{"Key": INSTANCE_INTERRUPTED_TAG, "Value": f"{kind} {at:.3f}"}])

    # -- busy-ness and protection -------------------------------------------------------------
    def _busy(self, instances: Sequence[_Instance], fresh: bool = False) -> dict[str, tuple[bool, bool | None]]:
        """instance id -> (ready to take work, busy); busy None: unknown, which counts as busy (a
        node dpe cannot see must not be removed as idle) for a bounded grace (policy.stuck_nodes).
        `fresh`: read now, not from the view the pools of a tick share (before a removal)."""
        if not instances:
            return {}
        if self._busy_lookup is None:
            return {inst.id: (self._serving(inst), None) for inst in instances}
        try:
            return self._busy_lookup(instances, fresh=fresh)
        except Exception as error:  # the lookup talks to another system; its failure must not remove nodes
            log.warning("pool %s: cannot tell which nodes are busy (%s); treating all as busy", self.name, error)
            return {inst.id: (self._serving(inst), None) for inst in instances}

    def _sync_protection(self, instances: Iterable[_Instance], busy: set[str]) -> None:
        protect = [i.id for i in instances if i.id in busy and not i.protected]
        release = [i.id for i in instances if i.id not in busy and i.protected]
        for ids, flag in ((protect, True), (release, False)):
            for start in range(0, len(ids), _BATCH):
                try:
                    self._call("SetInstanceProtection", self.autoscaling.set_instance_protection,
                               AutoScalingGroupName=self.settings.group_name,
                               InstanceIds=ids[start:start + _BATCH], ProtectedFromScaleIn=flag)
                except PoolError as error:
                    log.warning("%s", error)

    def _own_processes(self, group: Mapping[str, Any]) -> None:
        suspended = {p.get("ProcessName") for p in group.get("SuspendedProcesses", [])}
        missing = [p for p in OWNED_PROCESSES if p not in suspended]
        if missing:
            try:
                self._call("SuspendProcesses", self.autoscaling.suspend_processes,
                           AutoScalingGroupName=self.settings.group_name, ScalingProcesses=missing)
                log.info("pool %s: suspended %s on group %s (dpe sizes it)", self.name, ", ".join(missing),
                         self.settings.group_name)
            except PoolError as error:  # only safety: the next look retries
                log.warning("%s", error)

    def complete_termination(self, instance_id: str, hook_name: str, token: str | None = None) -> None:
        """Let a termination that waits in the group's lifecycle hook go on (its node is drained)."""
        self._call("CompleteLifecycleAction", self.autoscaling.complete_lifecycle_action,
                   AutoScalingGroupName=self.settings.group_name, LifecycleHookName=hook_name, InstanceId=instance_id,
                   LifecycleActionResult="CONTINUE", **({"LifecycleActionToken": token} if token else {}))

    # -- scale-up health and back-off: the primitives of pools/health.py's rule, on group tags -----
    def read_marks(self) -> dict[str, str]:
        return _marks(self._group())

    def write_marks(self, values: Mapping[str, str | None]) -> None:
        named = {MARK_PREFIX + key: value for key, value in values.items()}
        written = {key: value for key, value in named.items() if value is not None}
        if written:
            self._call("CreateOrUpdateTags", self.autoscaling.create_or_update_tags, Tags=[
                {"ResourceId": self.settings.group_name, "ResourceType": "auto-scaling-group", "Key": key,
                 "Value": value, "PropagateAtLaunch": False} for key, value in written.items()])
        deleted = [key for key, value in named.items() if value is None]
        if deleted:
            self._call("DeleteTags", self.autoscaling.delete_tags, Tags=[
                {"ResourceId": self.settings.group_name, "ResourceType": "auto-scaling-group", "Key": key}
                for key in deleted])

    def sizes(self) -> tuple[int, int, int, int]:
        # A node has arrived when it is running as dpe sees it (on Kubernetes: joined and Ready),
        # not when EC2 runs its instance.
        nodes = self.nodes()
        group = self._group_for_look()  # the description nodes() just read, handed on: no second call
        return (int(group["DesiredCapacity"]), sum(n.state == RUNNING for n in nodes), len(nodes),
                int(group["MinSize"]))

    def withdraw(self, size: int) -> None:
        self._call("SetDesiredCapacity", self.autoscaling.set_desired_capacity,
                   AutoScalingGroupName=self.settings.group_name, DesiredCapacity=size, HonorCooldown=False)

    def failed_scale_up(self, since: float) -> str | None:
        """A failed or cancelled scaling activity of the group since then, as Auto Scaling reports it."""
        response = self._call("DescribeScalingActivities", self.autoscaling.describe_scaling_activities,
                              AutoScalingGroupName=self.settings.group_name, MaxRecords=20)
        for activity in response.get("Activities", []):
            started = activity.get("StartTime")
            if started is not None and started.timestamp() >= since - 1 and \
                    activity.get("StatusCode") in ("Failed", "Cancelled"):
                return activity.get("StatusMessage") or activity.get("Description") or activity["StatusCode"]
        return None

    def describe(self) -> dict:
        """The group as AWS reports it, for `dpe pools`."""
        group = self._group()
        return {"group": self.settings.group_name, "min": int(group["MinSize"]), "max": int(group["MaxSize"]),
                "target": int(group["DesiredCapacity"]), "backoff": self.backoff()}


def _error_code(error: BaseException) -> str | None:
    """The AWS error code behind a PoolError raised by `_call`, if any."""
    cause = error.__cause__
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _tags(group: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in group.get("Tags", [])}


def busy_from_dagster_runs(pool: PoolConfig, instances: Sequence[_Instance], instance=None) -> dict[str, tuple[bool, bool]]:
    """instance id -> (serving, busy) from the `dagster_runs` busy source (pools/run_model.py)."""
    from dpe_dagster.pools.run_model import busy_nodes

    holding = busy_nodes(pool, _serving_nodes(instances), instance)
    return {i.id: (AwsAsgPool._serving(i), i.id in holding) for i in instances}


def _serving_nodes(instances: Sequence[_Instance]) -> list:
    """The serving instances, as the `dagster_runs` busy source's model takes them."""
    from dpe_dagster.pools.run_model import ServingNode

    return [ServingNode(i.id, i.launched_at, bool(i.interrupted[0])) for i in instances if AwsAsgPool._serving(i)]


def _marks(group: Mapping[str, Any]) -> dict[str, str]:
    """The marks of pools/health.py among the group's tags, by name."""
    tags = _tags(group)
    return {key: tags[MARK_PREFIX + key] for key in MARKS if MARK_PREFIX + key in tags}


def _interruption(tags: Iterable[Mapping[str, str]]) -> tuple[str, float | None]:
    """(kind, warned at) from an instance's INSTANCE_INTERRUPTED_TAG; ("", None) when it has none we wrote."""
    value = next((tag.get("Value", "") for tag in tags if tag.get("Key") == INSTANCE_INTERRUPTED_TAG), "")
    kind, _, at = value.partition(" ")
    return (kind, float_or_none(at)) if kind in INTERRUPTIONS else ("", None)
