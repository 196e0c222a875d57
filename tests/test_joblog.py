"""The job's log (balanced_experts.joblog): every attempt kept, each numbered truly, also
across invocations of Snakemake, whose own attempt counter starts at 1 in each."""

import os
import re

import pytest

from balanced_experts.joblog import HEADER, attempt_header, attempts_in, get_logger
from conftest import copy_workflow, snakemake


def _headers(path):
    """The header lines of a log, without their time stamps."""
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines() if HEADER.match(line)]


def test_attempts_are_numbered_by_the_log_and_snakemakes_count_shown_where_it_differs(tmp_path):
    path = tmp_path / "logs" / "job.log"
    assert attempts_in(path) == 0  # no log yet
    for snakemake_attempt in (1, 2, 1, None):  # a retry, then a new invocation, then a call outside Snakemake
        get_logger("job", path, attempt=snakemake_attempt).info("working")
        path.unlink()  # what Snakemake does before every attempt
    get_logger("job", path, attempt=1)
    pid = os.getpid()
    assert [header.split(" ", 2)[2] for header in _headers(path)] == [
        f"job: attempt 1, pid {pid} =====",
        f"job: attempt 2, pid {pid} =====",
        f"job: attempt 3 (Snakemake's attempt 1), pid {pid} =====",
        f"job: attempt 4, pid {pid} =====",
        f"job: attempt 5 (Snakemake's attempt 1), pid {pid} =====",
    ]
    assert attempts_in(path) == 5
    assert path.read_text().count(" working\n") == 4


def test_the_header_names_date_job_attempt_and_process():
    header = attempt_header("train_base", 2, 2)
    assert re.fullmatch(rf"===== \d{{4}}-\d\d-\d\d train_base: attempt 2, pid {os.getpid()} =====", header)
    assert HEADER.match(f"12:00:00 {header}")
    assert "attempt 4 (Snakemake's attempt 2), " in attempt_header("train_base", 4, 2)
    assert ": pid " in attempt_header("job", None, None)  # neither count known: the log could not be read


def test_a_log_that_cannot_be_kept_leaves_the_job_on_stderr_with_snakemakes_count(tmp_path, capsys):
    (tmp_path / "logs").write_text("a file where the log's folder should be")
    log = get_logger("job", tmp_path / "logs" / "job.log", attempt=2)
    log.info("still working")
    said = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert said[0] == f"warning: the job's log is not kept: {tmp_path / 'logs'}: File exists (EEXIST)"
    assert said[1].endswith(f"job: attempt 2, pid {os.getpid()} =====") and said[2] == "still working"


@pytest.mark.slow
def test_reruns_through_snakemake_count_on_from_the_log(tmp_path):
    """Real Snakemake, two invocations of one job, the second a forced rerun under --retries:
    each invocation's Snakemake calls its first attempt 1 (tests/test_faults.py holds a retry
    within one invocation)."""
    workdir = copy_workflow(tmp_path / "run")
    target, log = "results/tiny/data/train.txt", workdir / "results/tiny/logs/synthetic_data.log"
    snakemake(workdir, "--cores", "1", target)
    snakemake(workdir, "--cores", "1", "--retries", "2", target, "--forcerun", "synthetic_data")
    jobs = [header.split(" ", 2)[2].split(", pid ")[0] for header in _headers(log)]
    assert jobs == ["synthetic_data: attempt 1", "synthetic_data: attempt 2 (Snakemake's attempt 1)"]
