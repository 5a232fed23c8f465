"""The ledger sensor, ticked as the daemon ticks it."""

from __future__ import annotations

from dagster import build_sensor_context

from dpe_dagster.usage.sensor import build_ledger_sensor


def ledger_tick(env, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    build_ledger_sensor(env)(context)
    return context.cursor
