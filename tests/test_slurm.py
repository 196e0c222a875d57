"""The tiny pipeline on a real single-node Slurm, through profiles/slurm and the Slurm
executor plugin. Opt-in (`pytest -m slurm`): it needs root, Debian's slurm-wlm and munge
packages, the `slurm` extra (`pip install -e ".[slurm]"`), and about two minutes.

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

from conftest import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.slurm

# Jobs of the whole DAG on one synthetic dataset: data, classes, base, 3 experts, cRT and
# LWS, 6 models x 3 splits of logits, calibration, the seed's report and the report over
# seeds (the resolved config is written by a local rule, outside Slurm).
JOBS = {"synthetic_data": 1, "image_cache": 3, "classes": 1, "train_base": 1, "train_expert": 3,
        "train_decoupled": 2, "logits": 18, "calibrate": 1, "report": 1, "aggregate": 1}


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


def test_tiny_pipeline_runs_through_slurm(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster / "slurm.conf"))
    workdir = copy_workflow(tmp_path / "run")
    # --workflow-profile replaces profiles/default (see profiles/slurm/config.yaml); the
    # cluster has no sacct, hence squeue, and jobs of seconds are polled from the start.
    snakemake(workdir, "--workflow-profile", "profiles/slurm", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", timeout=900)

    report = pd.read_csv(workdir / "results/tiny/report.csv")
    assert "experts_calibrated" in report["method"].tolist()

    # Every job went through Slurm: its log lies in the plugin's folder of its rule under
    # its Slurm job id, and slurmctld recorded that job as completed.
    jobs = _completed_jobs(slurm_cluster / "jobcomp.log")
    rule_of_job = {int(log.stem): log.parent.parent.name.removeprefix("rule_")
                   for log in (workdir / ".snakemake/slurm_logs").glob("rule_*/*/*.log")}
    assert sorted(rule_of_job.values()) == sorted(rule for rule, n in JOBS.items() for _ in range(n))
    for job_id, rule in rule_of_job.items():
        assert jobs[job_id]["JobState"] == "COMPLETED", (rule, jobs[job_id])
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
