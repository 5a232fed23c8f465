"""The command the aws_asg provider adds to the `dpe` CLI (`Provider.commands`)."""

from __future__ import annotations

import logging
import os

import typer


def interruptions(once: bool = typer.Option(False, help="One long poll, then exit (default: poll forever)."),
                  wait_s: int = typer.Option(20, min=0, max=20, help="SQS WaitTimeSeconds of each poll.")) -> None:
    """Read the spot interruption queue continuously: cordon warned nodes, ask for replacements at once."""
    from dpe_dagster.console import command_environment, command_instance, print_error
    from dpe_dagster.pools.aws.interruptions import read_forever, reader_for

    env = command_environment()
    # The Dagster instance is mounted: tell the runs on warned nodes.
    instance = command_instance() if os.environ.get("DAGSTER_HOME") else None
    try:
        reader = reader_for(env, instance)
    except Exception as error:  # ConfigError, PoolError: say which and stop
        print_error("interruptions:", error)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not read_forever(reader, once=once, wait_s=wait_s):
        raise typer.Exit(1)
