"""Spot interruptions, as Karpenter and the Node Termination Handler handle them.

EC2 sends "EC2 Spot Instance Interruption Warning" two minutes before it reclaims a spot instance,
and "EC2 Instance Rebalance Recommendation" when one is at raised risk. An EventBridge rule
(deploy/cloudformation/interruption-queue.yaml) puts both on an SQS queue; `dpe interruptions`
long-polls it (WaitTimeSeconds) and, for an instance of one of dpe's pools:

- warning: cordons the node (no new pod lands there; Spark's decommissioning, enabled in the
  executor config, migrates the blocks of executors there) and asks for the replacement at once,
  instead of at the next autoscaler tick: one more node on the pool, or on its `fallback` when the
  pool is at its max_size;
- rebalance recommendation: cordons the node only (the warning, if it comes, replaces it).

Three parts: `parse` (message body -> Interruption, or MalformedMessage naming what is wrong),
`decide` (pure: event + who owns the instance -> Action), `InterruptionReader` (SQS and the
NodePool protocol at the edges). Every handled message is deleted; a message for an instance no
pool owns is deleted and ignored; a malformed one is logged and deleted, never raised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from dpe_dagster.config import Environment
from dpe_dagster.pools.base import NodePool, PoolError

log = logging.getLogger(__name__)

WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
DETAIL_TYPES = (WARNING, REBALANCE)


class MalformedMessage(ValueError):
    """A queue message that is not an EC2 interruption event as AWS sends it."""


@dataclass(frozen=True)
class Interruption:
    instance_id: str
    detail_type: str  # WARNING or REBALANCE
    time: str  # the event's time, as AWS wrote it


@dataclass(frozen=True)
class Action:
    pool: str  # the pool owning the instance
    instance_id: str
    cordon: bool
    grow_pool: str | None  # the pool asked for one more node now, or None
    reason: str


def parse(body: str) -> Interruption:
    try:
        event = json.loads(body)
    except (TypeError, ValueError) as error:
        raise MalformedMessage(f"message body is not JSON ({error}); expected an EventBridge event") from error
    if not isinstance(event, dict):
        raise MalformedMessage(f"message body must be a JSON object (an EventBridge event); got {type(event).__name__}")
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


def decide(event: Interruption, owner: str | None, env: Environment, targets: Mapping[str, int]) -> Action | None:
    """What to do about `event` for an instance of pool `owner` (None: no pool of dpe's owns it).
    `targets`: pool name -> its current target size."""
    if owner is None:
        return None
    if event.detail_type == REBALANCE:
        return Action(owner, event.instance_id, cordon=True, grow_pool=None, reason="rebalance recommendation")
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
                 cordon: Callable[[Sequence[str]], Any] | None = None):
        self.sqs = sqs
        self.queue_url = queue_url
        self.env = env
        self.pools = pools
        self.cordon = cordon  # instance ids -> cordon their Kubernetes nodes (KubeNodes.cordon_instances)

    def poll_once(self, wait_s: int = 20) -> list[Action]:
        """One long poll: handle and delete what arrived; returns the actions taken."""
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
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
        owner, targets = None, {}
        for name, pool in self.pools.items():
            targets[name] = pool.target()
            if owner is None and any(node.id == event.instance_id for node in pool.nodes()):
                owner = name
        action = decide(event, owner, self.env, targets)
        if action is None:
            log.info("interruption queue: %s for %s, an instance no pool owns: ignored", event.detail_type,
                     event.instance_id)
            return None
        log.warning("pool %s: %s for %s at %s", action.pool, action.reason, action.instance_id, event.time)
        if action.cordon and self.cordon is not None:
            self.cordon([action.instance_id])
        if action.grow_pool is not None:
            try:
                self.pools[action.grow_pool].set_target(targets[action.grow_pool] + 1)
            except PoolError as error:
                log.warning("pool %s: replacement for %s not asked for: %s", action.grow_pool,
                            action.instance_id, error)
        return action
