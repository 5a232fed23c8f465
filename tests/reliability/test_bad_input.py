"""Property-based fuzzing of what users hand dpe: environment config, run tags, CLI arguments and
trace files. Every case either works or fails with a clear, dpe-made message (and a non-zero exit
for the CLI), and nothing is scaled on the way."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dpe_dagster.cli import app
from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.launch import pool_choice
from dpe_dagster.sim.trace import TraceError, read_trace
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG, TagError, pool_request
from resources import aws_sim

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID = aws_sim.environment()
POOL_FIELDS = sorted(VALID["pools"]["spot-etl"]) + ["unknown_field"]
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=40), st.lists(st.text(max_size=5), max_size=3),
                 st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))


@FUZZ
@given(field=st.sampled_from(POOL_FIELDS), value=junk, top=st.sampled_from(["sensor_interval_s", "max_concurrent_runs",
                                                                            "aws", "pools", "none"]),
       top_value=junk)
def test_environment_config_works_or_names_the_field(field, value, top, top_value):
    raw = copy.deepcopy(VALID)
    raw["pools"]["spot-etl"][field] = value
    if top != "none":
        raw[top] = top_value
    try:
        env = parse_environment("aws-sim", raw)
    except ConfigError as error:
        message = str(error)
        assert message and "Traceback" not in message
        assert field in message or top in message or "pools" in message or "aws" in message, message
        return
    pool = env.pool("spot-etl")
    assert 0 <= pool.min_size <= pool.max_size and pool.node_cpus > 0 and math.isfinite(pool.price_per_node_hour)


TAG_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(["2", "0", "-1", "1e9", "nan", "inf", "2Gi", "4g", "0.5",
                                                              "spot-etl", "ondemand-etl", "../etc", "a b", "$(id)"]))


@FUZZ
@given(pool=TAG_VALUES, cpu=st.one_of(st.none(), TAG_VALUES), memory=st.one_of(st.none(), TAG_VALUES))
def test_run_tags_place_or_fail_clearly_and_scale_nothing(pool, cpu, memory, monkeypatch):
    env = parse_environment("aws-sim", copy.deepcopy(VALID))
    tags = {POOL_TAG: pool, **({CPU_TAG: cpu} if cpu is not None else {}), **({MEMORY_TAG: memory} if memory is not None else {})}
    opened = []
    monkeypatch.setattr(pool_choice, "open_pool", lambda *a, **k: opened.append(a) or pytest.fail("scaled"))
    try:
        request = pool_request(tags, env)
    except TagError as error:
        assert str(error).startswith("tag dpe/"), error
        with pytest.raises(TagError):
            pool_choice.place_on_pool(None, env, SimpleNamespace(tags=tags, run_id="fuzz"))
        assert opened == [], "a run with bad tags must scale nothing"
        return
    assert request.pool in env.pools
    assert math.isfinite(request.cpus) and request.cpus > 0
    assert math.isfinite(request.memory_gb) and request.memory_gb > 0


ARG = st.one_of(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
                st.sampled_from(["--json", "--by", "run", "pool", "--since", "--until", "2026-13-45", "yesterday",
                                 "--format", "csv", "xml", "--trace", "--policy", "-1", "nan", "--help"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["usage", "pools", "simulate", "down", "nonsense"]), args=st.lists(ARG, max_size=5))
def test_cli_arguments_work_or_exit_non_zero_with_a_message(command, args, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no-instance"))
    monkeypatch.setenv("DPE_ENV", "local")
    if command in ("down",) and args:
        args = args[:0]  # `dpe down` acts on the environment; only its argument parsing is fuzzed below
    result = CliRunner().invoke(app, [command, *args], catch_exceptions=True)
    if result.exit_code == 0:
        return
    assert isinstance(result.exception, SystemExit) or result.exception is None, (
        f"dpe {command} {args}: uncaught {result.exception!r}")
    assert result.output.strip(), f"dpe {command} {args} exited {result.exit_code} without saying why"


LINES = st.lists(st.one_of(
    st.text(alphabet="0123456789 -.;\t,abcxyz\n", max_size=60),
    st.just("1 0 0 10 2 -1 -1 2 10 -1 1 1 1 1 1 -1 -1 -1"),
    st.just("job_id,submit_s,run_s,cpus,memory_gb"), st.just("1,0,10,2,4")), max_size=8)


@FUZZ
@given(lines=LINES, suffix=st.sampled_from([".swf", ".csv", ".swf.gz", ".csv.gz", ".txt"]), raw=st.binary(max_size=40))
def test_trace_files_read_or_fail_with_the_file_and_line(lines, suffix, raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / f"fuzz{suffix}"
    path.write_bytes(raw if suffix.endswith(".gz") else "\n".join(lines).encode())
    try:
        trace = read_trace(path)
    except TraceError as error:
        assert str(path) in str(error), error
        return
    assert len(trace) > 0 and all(d > 0 and math.isfinite(d) for d in trace.duration) and all(c > 0 for c in trace.cpus)
