#!/usr/bin/env bash
# The image's entrypoint. Spark on Kubernetes starts executor pods from this image with the
# argument `executor` (and, on decommission, runs /opt/decom.sh); everything else (the Dagster
# run worker, code server, daemon) is exec'ed as given. Modelled on Spark's own entrypoint.sh,
# which the pyspark wheel does not ship.
set -euo pipefail

if [[ "${1:-}" == "executor" ]]; then
  shift
  SPARK_CLASSPATH="${SPARK_HOME}/jars/*${SPARK_CLASSPATH:+:$SPARK_CLASSPATH}"
  mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^[^=]*=//')
  exec tini -s -- java "${java_opts[@]}" \
    -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
    -cp "${SPARK_CLASSPATH}" \
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
    --driver-url "${SPARK_DRIVER_URL}" \
    --executor-id "${SPARK_EXECUTOR_ID}" \
    --cores "${SPARK_EXECUTOR_CORES}" \
    --app-id "${SPARK_APPLICATION_ID}" \
    --hostname "${SPARK_EXECUTOR_POD_IP}" \
    --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
    --podName "${SPARK_EXECUTOR_POD_NAME}" \
    "$@"
fi

exec tini -s -- "$@"
