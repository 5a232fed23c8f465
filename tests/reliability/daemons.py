"""A real aws-sim deployment for the suite: moto's server behind the fault injector, a Dagster
instance on a PostgreSQL database of its own, and dagster-daemons (each in its own process group)
loading `tests/reliability/defs.py`. Everything started is stopped by `close`, also on failure."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from dpe_dagster.daemon import dagster_bin, start_dagster_process, stop_process_group
from dpe_dagster.instance import write_instance
from dpe_dagster.pools.aws.emulator import MotoServer, create_groups
from resources import repository_environment
from tests.support.postgres import POSTGRES_URL
from tests.fakes.aws_faults import FaultInjector, FaultRates
from tests.paths import PROJECT_ROOT
from tests.reliability import summary
from tests.reliability.harness import KEY_ID, REGION, SECRET, alive_instances, clients, wait_for

IDLE_TIMEOUT_S = 6


class Deployment:
    def __init__(self, folder: Path, rates: FaultRates, seed: int = 7, runs: int = 0, run_s: float = 3,
                 run_tags: str | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.moto = MotoServer(folder / "moto").start()
        self.injector = FaultInjector(self.moto.url, rates, seed).start()
        self.autoscaling, self.ec2 = clients(self.moto.url)
        os.environ.setdefault("DPE_IDLE_TIMEOUT_S", str(IDLE_TIMEOUT_S))
        self.env = repository_environment("aws-sim")
        create_groups(self.env, self.autoscaling, self.ec2)
        self.database = f"dpe_reliability_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{self.database}"')
        self.postgres_url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + self.database
        self.home = folder / "dagster"
        # The instance exactly as dpe writes it (run retries, run monitoring, queue, launcher), on
        # PostgreSQL as in production: a crash or a lost node is survived with the deployed settings.
        write_instance(self.home, self.env, {"storage": {"postgres": {"postgres_url": self.postgres_url}}})
        self.workspace = folder / "workspace.yaml"
        self.workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
            "module_name": "tests.reliability.defs", "working_directory": str(PROJECT_ROOT), "location_name": "dpe"}}]}))
        self.daemon_env = {
            "DPE_ENV": "aws-sim", "DPE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), "AWS_ENDPOINT_URL": self.injector.url,
            "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
            "DPE_TEST_RUNS": str(runs), "DPE_TEST_RUN_S": str(run_s),
            "DPE_HOME": str(folder / "dpe"),
        }
        if run_tags:
            self.daemon_env["DPE_TEST_RUN_TAGS"] = run_tags
        self.instance = DagsterInstance.from_config(str(self.home))
        self.daemons = 0

    def _admin(self, statement: str) -> None:
        connection = psycopg2.connect(POSTGRES_URL)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    # -- daemons ----------------------------------------------------------------------------------
    def start_daemon(self) -> subprocess.Popen:
        self.daemons += 1
        process = start_dagster_process([dagster_bin("dagster-daemon"), "run", "-w", str(self.workspace)], self.home,
                                        self.folder / f"daemon-{self.daemons}.log", self.daemon_env)
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL the daemon process alone, as a crash would: its children are not told."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def run_worker_pid(self, run_id: str) -> int | None:
        """The pid of the run's worker process, as Dagster's own engine event names it."""
        for entry in self.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            found = re.fullmatch(r"Started process for run \(pid: (\d+)\)\.", entry.message or "")
            if found:
                return int(found.group(1))
        return None

    def lose_node(self, node_id: str, run_id: str) -> None:
        """A node lost for real: EC2 terminates the instance (straight to the emulator: AWS acting,
        not dpe; the group then replaces it, as its health check does in AWS), and the run worker the
        node held dies with it (SIGKILL: nothing on a reclaimed node gets to clean up)."""
        pid = self.run_worker_pid(run_id)
        assert pid is not None, f"run {run_id} named no worker process"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        assert "multiprocessing" in cmdline, f"pid {pid} is not a run worker: {cmdline}"
        _, ec2 = clients(self.moto.url)
        ec2.terminate_instances(InstanceIds=[node_id])
        os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("daemon-*.log")))

    # -- what a user checks -------------------------------------------------------------------------
    def runs(self, *statuses: DagsterRunStatus) -> list:
        return self.instance.get_runs(RunsFilter(statuses=list(statuses)) if statuses else None)

    def alive(self) -> dict[str, list[str]]:
        return {p.settings["group_name"]: alive_instances(self.autoscaling, self.ec2, p.settings["group_name"])
                for p in self.env.pools.values()}

    def groups_at_minimum(self) -> bool:
        for pool in self.env.pools.values():
            group = self.autoscaling.describe_auto_scaling_groups(
                AutoScalingGroupNames=[pool.settings["group_name"]])["AutoScalingGroups"][0]
            if int(group["DesiredCapacity"]) > int(group["MinSize"]) or self.alive()[pool.settings["group_name"]]:
                return False
        return True

    def every_instance(self) -> set[str]:
        out = set()
        for reservation in self.ec2.describe_instances()["Reservations"]:
            out |= {i["InstanceId"] for i in reservation["Instances"]}
        return out

    def instance_story(self) -> str:
        """Every instance EC2 knows (type, lifecycle, state) and the scale actions dpe sent: what a
        failure message needs to tell which node went where."""
        lines = []
        for reservation in self.ec2.describe_instances()["Reservations"]:
            for i in reservation["Instances"]:
                lines.append(f"{i['InstanceId']} {i.get('InstanceLifecycle', 'on-demand')} {i['State']['Name']} "
                             f"launched {i['LaunchTime']}")
        lines += [f"{time.strftime('%H:%M:%S', time.gmtime(at))} {action} {group or ''} {params}"
                  for action, group, params, at in self.injector.actions]
        return "\n".join(lines)

    def repeated_actions(self) -> list[str]:
        """Scale actions that reached AWS twice for one decision: an instance terminated twice, or
        the same desired capacity set twice in a row on a group with nothing in between."""
        problems = []
        terminated = Counter(p["InstanceId"] for a, _, p, _ in self.injector.actions
                             if a == "TerminateInstanceInAutoScalingGroup")
        problems += [f"terminated {i} {n} times" for i, n in terminated.items() if n > 1]
        last: dict[str, str] = {}
        for action, group, params, _ in self.injector.actions:
            if action == "SetDesiredCapacity":
                if last.get(group) == params["DesiredCapacity"]:
                    problems.append(f"SetDesiredCapacity {group}={params['DesiredCapacity']} twice in a row")
                last[group] = params["DesiredCapacity"]
            elif action == "TerminateInstanceInAutoScalingGroup":
                last.clear()
        return problems

    def settle(self, successes: int, timeout_s: float = 400) -> dict[str, object]:
        """Wait until every run ended (`successes` of them SUCCESS), every group is back at its
        minimum and the ledger caught up; then measure, add to the summary and assert nothing leaked,
        was lost or doubled, and no scale action reached AWS twice. Returns the ledger audit."""
        def ended():
            return len(self.runs(DagsterRunStatus.SUCCESS)) >= successes and not self.runs(
                DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                DagsterRunStatus.NOT_STARTED)

        wait_for(f"{successes} runs to end SUCCESS and none to be active", ended, timeout_s, 2,
                 lambda: f"{[(r.run_id[:8], r.status.value) for r in self.runs()]}\n{self.logs()[-4000:]}")
        wait_for("every group back at its minimum after the idle timeout", self.groups_at_minimum, timeout_s, 2,
                 lambda: f"alive: {self.alive()}\n{self.logs()[-4000:]}")
        removed = self.every_instance()

        def caught_up():
            return not summary.audit_ledger(self.instance, removed)["lost"]

        with contextlib.suppress(AssertionError):  # what is still missing is measured below
            wait_for("the ledger to record every ended run and removed node", caught_up, 90, 2)
        time.sleep(12)  # two more ledger/autoscaler ticks: a duplicate would show now
        audit = summary.audit_ledger(self.instance, removed)
        leaked = sum(len(ids) for ids in self.alive().values())
        summary.add(runs_completed=len(self.runs(DagsterRunStatus.SUCCESS)), nodes_leaked=leaked,
                    records_lost=len(audit["lost"]), records_duplicated=audit["extra"])
        assert leaked == 0, self.alive()
        assert audit["lost"] == [], f"{audit}\n{self.instance_story()}\n{self.logs()[-6000:]}"
        assert audit["duplicated"] == [], audit
        assert self.repeated_actions() == [], self.injector.actions
        return audit

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                stop_process_group(process, grace_s=10)
        with contextlib.suppress(Exception):
            self.instance.dispose()
        self.injector.close()
        self.moto.stop()
        with contextlib.suppress(Exception):
            self._admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.database}'")
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}"')
