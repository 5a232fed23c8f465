"""Containers as assets: a public image's command on the spot pool, speaking Dagster Pipes.

`word_count` runs a small Python program in the public `python:3.11-slim` image on `spot-etl`
(staging, prod: a pod on a spot node brought up for it); in `local` the same command runs as a
process on this machine. Its metadata and its asset check come back from the container.

The job carries no pool tag on purpose: the run itself only waits on the container, and the
container asks for its own room (`PoolContainers.run`), so nothing is reserved twice.
"""

from dagster import AssetCheckSpec, AssetExecutionContext, AssetSelection, MaterializeResult, asset, define_asset_job

from dpe_dagster.containers import PoolContainers, python_with_pipes

GROUP = "containers"
POOL = "spot-etl"
IMAGE = "python:3.11-slim"
TEXT = "any container as an asset on a node pool with the same scaling and the same cost accounting"

# Runs inside the container: any program that speaks Pipes would do.
WORD_COUNT = """
import collections, platform
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    words = pipes.get_extra("text").split()
    pipes.log.info(f"counting {len(words)} words on {platform.node()}")
    top, count = collections.Counter(words).most_common(1)[0]
    pipes.report_asset_materialization(metadata={
        "words": len(words), "distinct_words": len(set(words)), "most_common": f"{top} ({count})",
        "python": platform.python_version(),
    })
    pipes.report_asset_check(check_name="has_words", passed=len(words) > 0, metadata={"words": len(words)})
"""


@asset(group_name=GROUP, kinds={"python", "kubernetes"}, owners=["team:platform"],
       check_specs=[AssetCheckSpec("has_words", asset="word_count")],
       description=f"Counts words with a Python program in the public {IMAGE} image, on the {POOL} pool.")
def word_count(context: AssetExecutionContext, containers: PoolContainers) -> MaterializeResult:
    command, env = python_with_pipes(WORD_COUNT)
    run = containers.run(context, pool=POOL, image=IMAGE, command=command, env=env, cpus=0.5, memory="512m",
                         extras={"text": TEXT})
    return run.materialize_result()


ASSETS = [word_count]

containers_job = define_asset_job("containers", selection=AssetSelection.groups(GROUP),
                                  description=f"Run the container assets (on pool {POOL}).")
