"""The tiny pipeline on a real single-node Slurm, through profiles/slurm and the Slurm
executor plugin. Opt-in (`pytest -m slurm`): it needs root, Debian's slurm-wlm and munge
packages, the `slurm` extra (`pip install -e ".[slurm]"`), and a few minutes.

tests/slurm/start_slurm.sh starts the cluster for the test and stop_slurm.sh stops it;
the cluster has no accounting database, so the jobs are polled with squeue and checked
against slurmctld's job completion log.
"""

import importlib.util
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import REPO, copy_workflow, last_attempt, snakemake

pytestmark = pytest.mark.slurm

def _local_rules(workdir) -> set[str]:
    """The rules named in the workflow's ``localrules:`` directives, and ``all``: they run
    where Snakemake runs, not as Slurm jobs."""
    sources = [workdir / "Snakefile", *sorted((workdir / "workflow/rules").glob("*.smk"))]
    # `localrules: a, b` or one indented name a line
    blocks = re.findall(r"^localrules:([ \t]*\w+(?:,[ \t]*\w+)*|(?:\n[ \t]+\w+,?)+)",
                        "\n".join(p.read_text() for p in sources), re.M)
    return {"all", *(name for block in blocks for name in re.findall(r"\w+", block))}


def _submitted_rules(workdir) -> list[str]:
    """The rule of every job a dry run plans to submit to Slurm (every job but the local
    rules')."""
    plan = snakemake(workdir, "-n", "--cores", "2")
    rules = re.findall(r"^rule (\w+):\s*$", plan.stdout + "\n" + plan.stderr, re.M)
    return sorted(rule for rule in rules if rule not in _local_rules(workdir))


def _rule_of(slurm_log) -> str:
    """The rule of a job's Slurm log (``slurm_logs/rule_<rule>/[<wildcards>/]<id>.log``)."""
    return next(p.name.removeprefix("rule_") for p in slurm_log.parents if p.name.startswith("rule_"))


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "starts slurmctld, slurmd and munged: needs root"
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install slurm-wlm munge)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return 'the Slurm executor plugin is not installed (pip install -e ".[slurm]")'
    return None


@pytest.fixture
def slurm_cluster(tmp_path):
    """A running single-node cluster; yields its state folder, stops it afterwards."""
    missing = _missing_requirements()
    if missing:
        pytest.skip(missing)
    state = tmp_path / "slurm"
    scripts = REPO / "tests/slurm"
    started = subprocess.run([scripts / "start_slurm.sh", state], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield state
    finally:
        subprocess.run([scripts / "stop_slurm.sh", state], timeout=60)


def _completed_jobs(jobcomp_log):
    """``{job id: fields}`` of slurmctld's job completion log (jobcomp/filetxt)."""
    jobs = {}
    for line in jobcomp_log.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        jobs[int(fields["JobId"])] = fields
    return jobs


def _slurm_logs(workdir):
    """``{Slurm job id: its log}`` of every job the executor submitted; a job's log lies in
    ``.snakemake/slurm_logs/rule_<rule>/<wildcards>/<Slurm job id>.log`` (no wildcards
    folder for a rule without wildcards), one per attempt."""
    return {int(log.stem): log for log in (workdir / ".snakemake/slurm_logs").glob("rule_*/**/*.log")}


def _retried_job(workdir, job_id, fields, slurm_log) -> str:
    """What a job that failed and was submitted again left: its state in slurmctld's record,
    Snakemake's line on how its program ended (``died with <Signals.SIGSEGV: 11>``), and
    the end of its earlier attempts in the job's own log (the Python stack of a native
    crash, see balanced_experts.joblog.report_native_crashes)."""
    rule = _rule_of(slurm_log)
    wildcards = slurm_log.parent.name if slurm_log.parent.name != f"rule_{rule}" else ""
    text = slurm_log.read_text(errors="replace")
    said = [line.strip() for line in text.splitlines()
            if re.search(r"died with|Error in rule|exit status|Fatal Python error", line)]
    lines = [f"{rule} ({wildcards}): Slurm job {job_id} {fields.get('JobState')} "
             f"(ExitCode {fields.get('ExitCode')}), a crash that Snakemake's retry hid",
             f"  {slurm_log.relative_to(workdir)}:", *[f"    {line}" for line in said]]
    job_log = re.search(r"^\s*log: (\S+)", text, re.M)
    if job_log and (workdir / job_log[1]).exists():
        whole = (workdir / job_log[1]).read_text(errors="replace")
        earlier = whole[:len(whole) - len(last_attempt(whole))]
        lines += [f"  {job_log[1]}, before its last attempt:",
                  *[f"    {line}" for line in earlier.splitlines()[-30:]]]
    return "\n".join(lines)


def test_tiny_pipeline_runs_through_slurm(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster / "slurm.conf"))
    workdir = copy_workflow(tmp_path / "run")
    planned = _submitted_rules(workdir)
    assert {"train_base", "train_expert", "train_peer", "calibrate"} <= set(planned)
    # --workflow-profile replaces profiles/default (see profiles/slurm/config.yaml); the
    # cluster has no sacct, hence squeue, and jobs of seconds are polled from the start.
    # About 200 s on a quiet machine; the limit is for a hung run: on a loaded 2-core
    # machine the run took up to 15 minutes (the node's jobs share its 2 cores).
    snakemake(workdir, "--workflow-profile", "profiles/slurm", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", timeout=1800)

    report = pd.read_csv(workdir / "results/tiny/report.csv")
    assert "experts_calibrated" in report["method"].tolist()

    # Every job went through Slurm once and completed on its first attempt: the profile's
    # retry would hide a crash (the report is right all the same), so a job that Slurm
    # recorded as failed is reported as what it is, with the signal and its log.
    jobs = _completed_jobs(slurm_cluster / "jobcomp.log")
    slurm_logs = _slurm_logs(workdir)
    retried = [_retried_job(workdir, job_id, jobs.get(job_id, {}), log) for job_id, log in sorted(slurm_logs.items())
               if jobs.get(job_id, {}).get("JobState") != "COMPLETED"]
    assert not retried, "\n\n".join(retried)
    # Each job's log lies in the plugin's folder of its rule under its Slurm job id.
    rule_of_job = {job_id: _rule_of(log) for job_id, log in slurm_logs.items()}
    assert sorted(rule_of_job.values()) == planned
    for job_id in rule_of_job:
        assert jobs[job_id]["WorkDir"] == str(workdir)
    # The profile's per-rule requests reached Slurm (runtime in minutes, CPUs).
    base = next(jobs[i] for i, rule in rule_of_job.items() if rule == "train_base")
    assert base["TimeLimit"] == "720" and base["ProcCnt"] == "16"
    classes = next(jobs[i] for i, rule in rule_of_job.items() if rule == "classes")
    assert classes["TimeLimit"] == "10" and classes["ProcCnt"] == "1"
    # GPU jobs ran side by side: no local cap on the gpu resource serialised them.
    gpu_jobs = sorted((jobs[i]["StartTime"], jobs[i]["EndTime"]) for i, rule in rule_of_job.items()
                      if rule in ("train_expert", "train_decoupled", "logits"))
    assert any(later_start < end for (_, end), (later_start, _) in zip(gpu_jobs, gpu_jobs[1:]))
