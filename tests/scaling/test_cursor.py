"""The autoscaler's cursor keeps each node's memory as a versioned mapping of named fields, and a
restarted daemon reads back exactly what it saved."""

from __future__ import annotations

import json

import pytest

from dpe_dagster.scaling.cursor import NODE_MEMORY_VERSION, NodeMemory, dump_cursor, load_cursor

SEEN = NodeMemory(idle_since=None, busy_seconds=12.5, last_seen=700.0, launched_at=100.0, lifecycle="spot",
                  instance_type="m6i.large", zone="us-east-1a", unknown_since=650.0, unknown_seconds=40.0,
                  not_ready_since=690.0, interrupted="spot-interruption", interrupted_at=695.0)


def test_a_node_memory_is_saved_as_named_fields_and_read_back_unchanged():
    cursor = dump_cursor({"spot-etl": {"i-1": SEEN}})
    saved = json.loads(cursor)["nodes"]["spot-etl"]["i-1"]
    assert saved["version"] == NODE_MEMORY_VERSION
    assert (saved["busy_seconds"], saved["zone"], saved["interrupted"]) == (12.5, "us-east-1a", "spot-interruption")
    assert load_cursor(cursor) == {"spot-etl": {"i-1": SEEN}}


def test_a_node_memory_of_an_unknown_version_or_shape_fails_naming_the_field():
    unknown = json.dumps({"nodes": {"spot-etl": {"i-1": {**SEEN.to_json(), "version": NODE_MEMORY_VERSION + 1}}}})
    with pytest.raises(ValueError, match=f"pool spot-etl, node i-1: node memory: field 'version' is {NODE_MEMORY_VERSION + 1}; "
                                         f"allowed: {NODE_MEMORY_VERSION}"):
        load_cursor(unknown)
    with pytest.raises(ValueError, match="unknown field.* idle_for; allowed: idle_since, busy_seconds"):
        NodeMemory.from_json({"version": NODE_MEMORY_VERSION, "idle_for": 3.0})
    with pytest.raises(ValueError, match="a positional list holds 3, 7, 10, 12 fields, not 5"):
        NodeMemory.from_json([5.0, 1.0, 7.0, 1.0, "spot"])
