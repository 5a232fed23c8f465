"""Spot interruptions and terminations AWS starts, as Karpenter and the Node Termination Handler
handle them.

EC2 sends "EC2 Spot Instance Interruption Warning" two minutes before it reclaims a spot instance,
and "EC2 Instance Rebalance Recommendation" when one is at raised risk. An EventBridge rule
(deploy/cloudformation/interruption-queue.yaml) puts both on an SQS queue, and each pool's group
sends there the notification of its termination lifecycle hook (deploy/cloudformation/node-pool.yaml:
an instance Auto Scaling is about to terminate, for a health replacement or an operator, waits
there). `dpe interruptions` long-polls the queue (WaitTimeSeconds) and, for an instance of one of
dpe's pools:

- warning: cordons the node, drains it through the Eviction API (every pod that does not go with
  the node; each pod's grace period capped at `DRAIN_GRACE_S`, inside the notice, so a Spark
  executor's preStop hook decommissions it: its blocks move to other executors or to the
  fallback storage, `spark.storage.decommission.fallbackStorage.path`), and asks for the
  replacement at once, instead of at the next autoscaler tick: one more node on the pool, or on
  its `fallback` when the pool is at its max_size;
- rebalance recommendation: cordons the node only (the warning, if it comes, replaces it);
- termination (lifecycle hook): cordons and drains the node, and lets the termination go on
  (CompleteLifecycleAction) once nothing but DaemonSets is left on it, or after `HOOK_WAIT_S`. A
  node dpe removes itself was drained before; its hook is completed at once.

Either way the node is marked on the provider (`mark_interrupted`: a tag on the instance, written
before the replacement is asked for), so the autoscaler, in its own process, sees it as going: no
room, not filling the target (scaling/policy.py), and its lifetime record says it was interrupted.
SQS delivers a message at least once: a second warning for a node already marked asks for nothing.

Three parts: `parse` (message body -> Interruption, or MalformedMessage naming what is wrong),
`decide` (pure: event + who owns the instance -> Action), `InterruptionReader` (SQS and the
NodePool protocol at the edges). Every handled message is deleted; a message for an instance no
pool owns is deleted and ignored; a malformed one is logged and deleted, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from dpe_dagster.config import Environment
from dpe_dagster.pools.aws.asg import AwsAsgPool
from dpe_dagster.pools.base import REBALANCE_RECOMMENDATION, SPOT_INTERRUPTION, NodePool, PoolError

log = logging.getLogger(__name__)

WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
DETAIL_TYPES = (WARNING, REBALANCE)
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
TEST_NOTIFICATION = "autoscaling:TEST_NOTIFICATION"
# A drained pod gets at most this long to stop (a Spark executor decommissions in it), inside the
# two minutes between a spot warning and the reclaim.
DRAIN_GRACE_S = 100
# How long a termination waits in the lifecycle hook for its node to drain (the hook's heartbeat
# timeout in node-pool.yaml is 180 s, after which AWS goes on anyway).
HOOK_WAIT_S = 150.0


class MalformedMessage(ValueError):
    """A queue message that is not an EC2 interruption event as AWS sends it."""


@dataclass(frozen=True)
class Interruption:
    instance_id: str
    detail_type: str  # WARNING or REBALANCE
    time: str  # the event's time, as AWS wrote it

    @property
    def kind(self) -> str:
        """What the node's record calls it (`Node.interrupted`)."""
        return SPOT_INTERRUPTION if self.detail_type == WARNING else REBALANCE_RECOMMENDATION

    def at(self, default: float) -> float:
        """The event's time (unix s), or `default` when AWS's field does not parse."""
        from datetime import datetime

        try:
            return datetime.fromisoformat(self.time).timestamp()
        except ValueError:
            return default


@dataclass(frozen=True)
class Termination:
    """Auto Scaling is about to terminate an instance; it waits in the group's lifecycle hook."""

    instance_id: str
    group: str
    hook: str
    token: str | None
    time: str


@dataclass(frozen=True)
class Action:
    pool: str  # the pool owning the instance
    instance_id: str
    cordon: bool
    grow_pool: str | None  # the pool asked for one more node now, or None
    reason: str
    asked_at: float | None = None  # unix time the replacement was asked for, once it was


def parse(body: str) -> Interruption | Termination | None:
    """An EC2 interruption event, a termination lifecycle notification, or None for Auto Scaling's
    test notification (sent when a hook is created)."""
    try:
        event = json.loads(body)
    except (TypeError, ValueError) as error:
        raise MalformedMessage(f"message body is not JSON ({error}); expected an EventBridge event") from error
    if not isinstance(event, dict):
        raise MalformedMessage(f"message body must be a JSON object (an EventBridge event); got {type(event).__name__}")
    if event.get("Event") == TEST_NOTIFICATION:
        return None
    if "LifecycleTransition" in event:
        return _termination(event)
    if event.get("source") != "aws.ec2":
        raise MalformedMessage(f"source: must be 'aws.ec2'; got {event.get('source')!r}")
    kind = event.get("detail-type")
    if kind not in DETAIL_TYPES:
        raise MalformedMessage(f"detail-type: must be one of {', '.join(repr(t) for t in DETAIL_TYPES)}; got {kind!r}")
    detail = event.get("detail")
    iid = detail.get("instance-id") if isinstance(detail, dict) else None
    if not isinstance(iid, str) or not iid.startswith("i-"):
        raise MalformedMessage(f"detail.instance-id: must be an EC2 instance id like 'i-0abc...'; got {iid!r}")
    return Interruption(iid, kind, str(event.get("time", "")))


def _termination(event: Mapping[str, Any]) -> Termination:
    if event.get("LifecycleTransition") != TERMINATING:
        raise MalformedMessage(f"LifecycleTransition: must be {TERMINATING!r}; got {event.get('LifecycleTransition')!r}")
    iid = event.get("EC2InstanceId")
    if not isinstance(iid, str) or not iid.startswith("i-"):
        raise MalformedMessage(f"EC2InstanceId: must be an EC2 instance id like 'i-0abc...'; got {iid!r}")
    for field in ("AutoScalingGroupName", "LifecycleHookName"):
        if not isinstance(event.get(field), str) or not event[field]:
            raise MalformedMessage(f"{field}: must be a non-empty string; got {event.get(field)!r}")
    token = event.get("LifecycleActionToken")
    return Termination(iid, event["AutoScalingGroupName"], event["LifecycleHookName"],
                       token if isinstance(token, str) else None, str(event.get("Time", "")))


def decide(event: Interruption, owner: str | None, env: Environment, targets: Mapping[str, int],
           marked: str = "") -> Action | None:
    """What to do about `event` for an instance of pool `owner` (None: no pool of dpe's owns it).
    `targets`: pool name -> its current target size; `marked`: the node's `interrupted` so far."""
    if owner is None:
        return None
    if event.detail_type == REBALANCE:
        return Action(owner, event.instance_id, cordon=True, grow_pool=None, reason="rebalance recommendation")
    if marked == SPOT_INTERRUPTION:  # a redelivered warning: its replacement was asked for
        return Action(owner, event.instance_id, cordon=True, grow_pool=None,
                      reason="spot interruption warning, already handled")
    grow: str | None = None
    pool = env.pool(owner)
    if targets.get(owner, 0) < pool.max_size:
        grow = owner
    elif pool.fallback is not None and targets.get(pool.fallback, 0) < env.pool(pool.fallback).max_size:
        grow = pool.fallback
    return Action(owner, event.instance_id, cordon=True, grow_pool=grow, reason="spot interruption warning")


class InterruptionReader:
    """Reads the interruption queue and acts through the NodePool protocol."""

    def __init__(self, sqs: Any, queue_url: str, env: Environment, pools: Mapping[str, NodePool],
                 cordon: Callable[[Sequence[str]], Any] | None = None, instance: Any | None = None,
                 drain: Callable[[Sequence[str]], Any] | None = None,
                 pods_left: Callable[[Sequence[str]], int] | None = None):
        self.sqs = sqs
        self.queue_url = queue_url
        self.env = env
        self.pools = pools
        self.cordon = cordon  # instance ids -> cordon their Kubernetes nodes (KubeNodes.cordon_instances)
        self.drain = drain  # instance ids -> evict what does not go with their nodes (KubeNodes.evict)
        self.pods_left = pods_left  # instance ids -> pods not yet drained off (KubeNodes.pods_left)
        self.instance = instance  # the Dagster instance: the runs on a warned node are told (tag, event log)
        # instance id -> (termination waiting in its hook, its pool, when to let it go anyway)
        self.terminating: dict[str, tuple[Termination, str, float]] = {}

    def poll_once(self, wait_s: int = 20) -> list[Action]:
        """One long poll: handle and delete what arrived; returns the actions taken. Terminations
        waiting for their drain are let go first (and the poll is short while any waits)."""
        self.finish_terminations()
        wait = min(wait_s, 1) if self.terminating else wait_s
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
        actions = []
        for message in got.get("Messages", []):
            try:
                action = self.handle(message.get("Body", ""))
            except MalformedMessage as error:
                log.warning("interruption queue: dropped message %s: %s", message.get("MessageId"), error)
                action = None
            if action is not None:
                actions.append(action)
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return actions

    def handle(self, body: str) -> Action | None:
        event = parse(body)
        if event is None:
            return None
        if isinstance(event, Termination):
            return self._terminating(event)
        owner, targets, marked = None, {}, ""
        for name, pool in self.pools.items():
            targets[name] = pool.target()
            if owner is None:
                node = next((n for n in pool.nodes() if n.id == event.instance_id), None)
                if node is not None:
                    owner, marked = name, node.interrupted
        action = decide(event, owner, self.env, targets, marked)
        if action is None:
            log.info("interruption queue: %s for %s, an instance no pool owns: ignored", event.detail_type,
                     event.instance_id)
            return None
        log.warning("pool %s: %s for %s at %s", action.pool, action.reason, action.instance_id, event.time)
        if action.cordon and self.cordon is not None:
            self.cordon([action.instance_id])
        if event.detail_type == WARNING:
            self._drain(action.pool, action.instance_id)
        first = marked != SPOT_INTERRUPTION  # a warning is never turned back into a recommendation
        if first:
            self._mark(action, event)
        # The runs the node holds, read before the replacement exists: a new node can change
        # where a provider's view places them (the emulator packs onto nodes by launch time).
        held = self._runs_on(action) if first and event.detail_type == WARNING and self.instance is not None else []
        if action.grow_pool is not None:
            try:
                self.pools[action.grow_pool].set_target(targets[action.grow_pool] + 1)
                action = dataclasses.replace(action, asked_at=time.time())
            except PoolError as error:
                log.warning("pool %s: replacement for %s not asked for: %s", action.grow_pool,
                            action.instance_id, error)
        # Told after the replacement and the cordon, which are what the two minutes are for.
        if held:
            self._tell_runs(held, action, event)
        return action

    def _drain(self, pool: str, instance_id: str) -> None:
        if self.drain is None:
            return
        try:
            evicted = self.drain([instance_id])
            log.warning("pool %s: draining %s: evicted %s", pool, instance_id, ", ".join(evicted) or "nothing")
        except Exception as error:  # noqa: BLE001 - a refused eviction (a budget) must not stop the rest
            log.warning("pool %s: draining %s: %s", pool, instance_id, error)

    def _terminating(self, event: Termination) -> Action | None:
        owner = next((name for name, config in self.env.pools.items()
                      if config.provider == "aws_asg" and dict(config.settings).get("group_name") == event.group), None)
        if owner is None:
            log.info("interruption queue: termination of %s in group %s, which no pool owns: ignored",
                     event.instance_id, event.group)
            return None
        log.warning("pool %s: AWS terminates %s (lifecycle hook %s): draining it first", owner, event.instance_id,
                    event.hook)
        if self.cordon is not None:
            try:
                self.cordon([event.instance_id])
            except Exception as error:  # noqa: BLE001 - the hook lets it go after HOOK_WAIT_S anyway
                log.warning("pool %s: cordoning %s: %s", owner, event.instance_id, error)
        self._drain(owner, event.instance_id)
        self.terminating[event.instance_id] = (event, owner, time.monotonic() + HOOK_WAIT_S)
        self.finish_terminations()
        return Action(owner, event.instance_id, cordon=True, grow_pool=None, reason="termination (lifecycle hook)")

    def finish_terminations(self) -> list[str]:
        """Complete the lifecycle action of each waiting termination whose node is drained (or
        that waited long enough); returns their instance ids."""
        done = []
        for iid, (event, owner, deadline) in list(self.terminating.items()):
            try:
                left = self.pods_left([iid]) if self.pods_left is not None else 0
            except Exception as error:  # noqa: BLE001 - cannot tell: wait for the deadline
                log.warning("pool %s: pods left on %s unknown: %s", owner, iid, error)
                left = 1
            if left and time.monotonic() < deadline:
                continue
            pool = self.pools[owner]
            try:
                if isinstance(pool, AwsAsgPool):
                    pool.complete_termination(iid, event.hook, event.token)
            except PoolError as error:
                log.warning("pool %s: termination of %s not completed (AWS goes on after the hook's timeout): %s",
                            owner, iid, error)
            del self.terminating[iid]
            done.append(iid)
        return done

    def _mark(self, action: Action, event: Interruption) -> None:
        """Before the replacement is asked for: a tick between the two would otherwise see a
        target the nodes have not filled, and withdraw the replacement."""
        pool = self.pools[action.pool]
        if not isinstance(pool, AwsAsgPool):  # an EC2 instance is only ever an aws_asg pool's node
            return
        try:
            pool.mark_interrupted(action.instance_id, event.kind, event.at(time.time()))
        except PoolError as error:
            log.warning("pool %s: %s not marked as interrupted: %s", action.pool, action.instance_id, error)

    def _runs_on(self, action: Action) -> list[str]:
        try:
            placed = self.pools[action.pool].run_nodes()
        except PoolError as error:
            log.warning("pool %s: runs on %s not told of its interruption: %s", action.pool, action.instance_id, error)
            return []
        return sorted(run_id for run_id, node_id in placed.items() if node_id == action.instance_id)

    def _tell_runs(self, held: Sequence[str], action: Action, event: Interruption) -> None:
        """Tag each run holding the warned node and say so in its event log (the UI shows both)."""
        from dpe_dagster.tags import INTERRUPTED_TAG

        for run_id in held:
            run = self.instance.get_run_by_id(run_id)
            if run is None:
                continue
            self.instance.add_run_tags(run_id, {INTERRUPTED_TAG: f"{action.instance_id} {event.time}".strip()})
            where = f"; replacement asked of pool {action.grow_pool}" if action.grow_pool else ""
            self.instance.report_engine_event(
                f"dpe: spot interruption warning for node {action.instance_id} of pool {action.pool} "
                f"(EC2 reclaims it in two minutes){where}", run)


# -- configuration and the long-running reader -------------------------------------------------
QUEUE_URL_FIELD = "interruption_queue_url"


def queue_url(env: Environment) -> str | None:
    """`aws.interruption_queue_url`: the SQS queue EventBridge puts EC2's interruption events on
    (deploy/cloudformation/interruption-queue.yaml outputs it), or None when not set."""
    from urllib.parse import urlparse

    from dpe_dagster.config import ConfigError

    url = dict(env.block("aws")).get(QUEUE_URL_FIELD)
    if url is None:
        return None
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.count("/") != 2:
        raise ConfigError(f"aws.{QUEUE_URL_FIELD}: must be an SQS queue URL like "
                          f"'https://sqs.us-east-1.amazonaws.com/123456789012/dpe-interruptions'; got {url!r}")
    return url


def sqs_client(env: Environment) -> Any:
    """An SQS client with the environment's region, endpoint and retry settings."""
    import boto3
    from botocore.config import Config

    from dpe_dagster.pools.aws.asg import AwsSettings

    aws = AwsSettings.parse(dict(env.block("aws")))
    # read_timeout above the long poll's 20 s wait, or every empty poll would time out.
    config = Config(region_name=aws.region, retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},
                    connect_timeout=10, read_timeout=40, user_agent_extra="dpe")
    return boto3.session.Session().client("sqs", config=config, endpoint_url=aws.endpoint_url)


def reader_for(env: Environment, instance: Any | None = None) -> InterruptionReader:
    from dpe_dagster.config import ConfigError
    from dpe_dagster.pools import open_pool

    url = queue_url(env)
    if url is None:
        raise ConfigError(f"aws.{QUEUE_URL_FIELD}: not set for environment {env.name!r}; set it to the queue "
                          "deploy/cloudformation/interruption-queue.yaml creates")
    pools = {name: open_pool(config, env) for name, config in env.pools.items()}
    kube = {}
    if any(dict(config.settings).get("busy_source", "kubernetes") == "kubernetes" for config in env.pools.values()
           if config.provider == "aws_asg"):
        from dpe_dagster.kube.nodes import KubeNodes, not_a_daemon
        from dpe_dagster.pools.aws.asg import node_instance_id

        nodes = KubeNodes.from_environment(None, node_instance_id)
        kube = {"cordon": nodes.cordon_instances, "pods_left": nodes.pods_left,
                "drain": lambda ids: nodes.evict(ids, not_a_daemon, grace_period_s=DRAIN_GRACE_S)}
    return InterruptionReader(sqs_client(env), url, env, pools, instance=instance, **kube)


def read_forever(reader: InterruptionReader, *, once: bool, wait_s: int) -> bool:
    """Poll the queue (once, or until stopped); False when `once` and the poll failed."""
    while True:
        try:
            reader.poll_once(wait_s=wait_s)
        except Exception as error:  # an API error that outlasted retries: log, keep reading
            log.error("interruption queue: poll failed: %s", error)
            if once:
                return False
            time.sleep(1)
        if once:
            return True
