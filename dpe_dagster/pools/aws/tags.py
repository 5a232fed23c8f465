"""Tags dpe writes on the Auto Scaling groups and instances of its pools (dpe's own names on the
cloud's objects; the names dpe gives Dagster runs and Kubernetes objects are in dpe_dagster/tags.py)."""

from dpe_dagster.pools.health import BACKOFF_REASON, BACKOFF_UNTIL, SCALE_UP_SINCE

# Group tags, through which every dpe process sees the same scale-up and back-off state (the
# marks of pools/health.py under this prefix):
MARK_PREFIX = "dpe:"
SCALE_UP_SINCE_TAG = MARK_PREFIX + SCALE_UP_SINCE
BACKOFF_UNTIL_TAG = MARK_PREFIX + BACKOFF_UNTIL
BACKOFF_REASON_TAG = MARK_PREFIX + BACKOFF_REASON
# on the groups dpe creates (the aws-sim emulator; deploy/cloudformation for staging and prod):
GROUP_POOL_TAG = "dpe:pool"
GROUP_MANAGED_TAG = "dpe:managed"
# The instance tag `dpe interruptions` writes on a node EC2 warned about: "<kind> <unix time of the
# warning>". The control loop, another process, reads it with the instance (no extra call).
INSTANCE_INTERRUPTED_TAG = "dpe:interrupted"
