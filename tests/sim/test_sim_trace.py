"""Trace readers: what a user feeding a job log to `dpe simulate` relies on."""

from __future__ import annotations

import gzip

import pytest

from dpe_dagster.sim.trace import TraceError, read_trace

SWF_HEADER = "; UnixStartTime: 1000000000\n; a comment\n"


def swf_line(job: int, submit: int, run: int, procs: int, req_time: int = 3600, user: int = 1) -> str:
    return f"{job} {submit} 5 {run} {procs} -1 -1 {procs} {req_time} 1024 1 {user} 1 7 1 1 -1 -1\n"


def test_swf_jobs_follow_the_replay_rules(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(SWF_HEADER + swf_line(1, 100, 50, 2) + swf_line(2, 10, 30, 4)
                    + swf_line(3, 20, 0, 4) + swf_line(4, 30, 20, -1).replace(" -1 4 ", " -1 -1 "))
    trace = read_trace(path)
    assert trace.arrival == [10.0, 100.0]  # sorted by arrival; the recorded wait is ignored
    assert trace.duration == [30.0, 50.0]
    assert trace.cpus == [4.0, 2.0]
    assert trace.excluded == 2  # no run time, no CPUs
    assert trace.start_unix == 1000000000
    assert trace.requested_s == [3600.0, 3600.0]
    assert trace.key[0] == "1/7"
    assert trace.memory_gb[0] == pytest.approx(4 * 1024 / 1024 / 1024)


def test_gzipped_swf_reads_the_same(tmp_path):
    text = SWF_HEADER + swf_line(1, 0, 60, 1) + swf_line(2, 5, 60, 3)
    plain, packed = tmp_path / "t.swf", tmp_path / "t.swf.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_trace(plain).cpus == read_trace(packed).cpus == [1.0, 3.0]


def test_truncated_swf_line_names_its_line_number(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(SWF_HEADER + swf_line(1, 0, 60, 1) + "2 5 5 60 3 -1\n")
    with pytest.raises(TraceError, match=r"line 4: expected 18 .*got 6"):
        read_trace(path)


def test_non_numeric_field_names_line_and_field(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(SWF_HEADER + swf_line(1, 0, 60, 1).replace(" 60 ", " sixty "))
    with pytest.raises(TraceError, match=r"line 3: field 4 \(run time\) must be a number; got 'sixty'"):
        read_trace(path)


def test_bad_lines_can_be_skipped_and_counted(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(SWF_HEADER + swf_line(1, 0, 60, 1) + "garbage\n" + swf_line(2, 5, 60, 2) + "3 4\n")
    trace = read_trace(path, skip_bad_lines=True)
    assert len(trace) == 2 and trace.bad_lines == 2


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress((SWF_HEADER + swf_line(1, 0, 60, 1) * 2000).encode())
    path = tmp_path / "t.swf.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match=r"line \d+: file is truncated"):
        read_trace(path)


def test_csv_trace_with_optional_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,duration_s,cpus,memory_gb,user,requested_s\n0,60,2,4,alice,120\n30,10,1,1,bob,\n")
    trace = read_trace(path)
    assert trace.cpus == [2.0, 1.0] and trace.memory_gb == [4.0, 1.0]
    assert trace.key == ["alice", "bob"] and trace.requested_s == [120.0, None]


def test_csv_header_errors_list_allowed_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival,duration_s,cpus\n0,1,1\n")
    with pytest.raises(TraceError, match=r"line 1: header lacks arrival_s; has unknown arrival; required columns"):
        read_trace(path)


def test_csv_bad_value_names_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,duration_s,cpus\n0,1,1\n5,x,1\n")
    with pytest.raises(TraceError, match=r"line 3: duration_s must be a number; got 'x'"):
        read_trace(path)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "absent.swf")
    other = tmp_path / "t.txt"
    other.write_text("1 2 3\n")
    with pytest.raises(TraceError, match=r"allowed: \.swf, \.swf\.gz, \.csv, \.csv\.gz"):
        read_trace(other)
