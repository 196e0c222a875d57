"""The suite's tiers (docs/development.md): a test without the slow marker, as this file's,
may not start Snakemake or train a model (conftest refuses it, naming the test); the tiny
config is the committed tests/tiny.yaml that .ci/run runs the README's commands on."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

import conftest
from conftest import TINY_CONFIG, tiny_config

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REFUSED = pytest.fail.Exception


@pytest.mark.parametrize("command", [
    [SNAKEMAKE, "--version"],
    [sys.executable, "-m", "snakemake", "--version"],
    [sys.executable, "-c", "import sys\nfrom snakemake.api import SnakemakeApi\n"],
    f"{SNAKEMAKE} --version",
], ids=["program", "module", "api", "shell"])
def test_a_fast_test_may_not_run_snakemake(command):
    with pytest.raises(REFUSED, match=r"test_suite_tiers\.py::test_a_fast_test_may_not_run_snakemake\[\w+\] "
                                      r"runs Snakemake, but is not marked slow: add @pytest.mark.slow"):
        subprocess.run(command, shell=isinstance(command, str), capture_output=True)


def test_a_fast_test_may_run_other_programs_and_fit_a_calibration():
    said = subprocess.run([sys.executable, "-c", "print('snakemake')"], capture_output=True, text=True)
    assert said.stdout == "snakemake\n"
    scale = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.LBFGS([scale], max_iter=5)

    def closure():
        optimizer.zero_grad()
        loss = (scale - 1).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert (scale - 1).abs().max() < 0.1


def test_a_fast_test_may_not_train():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.sum().backward()
    with pytest.raises(REFUSED, match=r"trains a model \(SGD step\), but is not marked slow"):
        optimizer.step()
    assert torch.equal(weight, torch.zeros(2))


def test_a_fast_test_may_not_use_a_whole_dag_run():
    # (Not through request.getfixturevalue: the session would keep the refusal as tiny_run's value.)
    with pytest.raises(REFUSED, match="uses the whole-DAG run tiny_run, but is not marked slow"):
        conftest._shared(None, "tiny_run")


def test_the_tiny_config_is_read_fresh_from_its_file():
    # .ci/run reaches it through tests/test_docs_commands.py, which checks its own line there.
    assert tiny_config() is not tiny_config() and tiny_config()["default_datasets"] == ["tiny"]
    assert tiny_config() == yaml.safe_load(TINY_CONFIG.read_text())
