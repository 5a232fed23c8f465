#!/usr/bin/env bash
# Graceful decommissioning: Spark's pod preStop hook runs this; SIGPWR asks the executor to
# migrate its shuffle and RDD blocks, then we wait for it to exit (spark.decommission.enabled).
set -u
pid=$(pgrep -f KubernetesExecutorBackend | head -n1)
[[ -z "$pid" ]] && exit 0
kill -s SIGPWR "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
