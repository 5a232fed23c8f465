"""The autoscaler's cursor kept in the instance, as the daemon keeps a sensor's cursor after each
tick (where `dpe pools`, the health check and `dpe metrics` read it)."""

from __future__ import annotations


def store_cursor(instance, cursor: str) -> None:
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
    from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, SensorInstigatorData

    from dpe_dagster.scaling.cursor import AUTOSCALER_SENSOR

    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("dpe"), "__repository__"),
                                    AUTOSCALER_SENSOR)
    state = InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.RUNNING,
                            SensorInstigatorData(cursor=cursor))
    if instance.get_instigator_state(state.instigator_origin_id, state.selector_id):
        instance.update_instigator_state(state)
    else:
        instance.add_instigator_state(state)
