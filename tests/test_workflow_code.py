"""What the workflow declares about its own code, read from real Snakemake: every rule's code
inputs are its stage program and exactly the library modules that program runs; each program
reads Snakemake's job object once, at the top of its main; the conda environment of the
stages holds every package they import; a job may use CUDA when asked or when `auto` finds a GPU."""

import ast
import re
import json
import modulefinder
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from balanced_experts.execution import ExecutionSettings
from conftest import REPO, copy_workflow

LIBRARY = "balanced_experts"

# Every rule with a `script:` as Snakemake parsed it: the program and the `code` input.
DECLARED_CODE = """
import json
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(ResourceSettings(), snakefile=Path("Snakefile"), workdir=Path("."))._workflow
    print(json.dumps({
        rule.name: {
            "script": str((Path(rule.basedir) / rule.script).resolve().relative_to(Path.cwd().resolve())),
            "code": list(rule.input.code) if "code" in rule.input.keys() else None,
        }
        for rule in workflow.rules if rule.script
    }))
"""


def declared_code(workdir: Path) -> dict[str, dict]:
    result = subprocess.run([sys.executable, "-c", DECLARED_CODE], cwd=workdir, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def import_closure(workdir: Path, script: str) -> set[str]:
    """The library files ``script`` runs, as the standard library's modulefinder sees them
    (it follows every import, at the top of a module or inside a function)."""
    finder = modulefinder.ModuleFinder(path=[str(workdir / "src")])
    finder.run_script(str(workdir / script))
    return {str(Path(module.__file__).relative_to(workdir)) for name, module in finder.modules.items()
            if name.split(".")[0] == LIBRARY}


@pytest.mark.slow
def test_every_rule_declares_exactly_the_library_modules_its_program_runs(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    rules = declared_code(workdir)
    assert {"train_base", "train_expert", "train_decoupled", "logits", "calibrate", "report"} <= set(rules)
    for name, rule in rules.items():
        assert rule["code"], f"rule {name} declares no code input"
        assert rule["code"][0] == rule["script"], name
        assert set(rule["code"][1:]) == import_closure(workdir, rule["script"]), name
    # The cases this used to miss: the process group's module, which every training runs.
    for name in ("train_base", "train_expert", "train_decoupled"):
        assert f"src/{LIBRARY}/distributed.py" in rules[name]["code"]


@pytest.mark.slow
def test_a_new_import_is_a_new_code_input(tmp_path):
    """Imports are read, not listed: an import added to a program (here inside a function),
    or to a library module it imports, is declared with no edit to the rules."""
    workdir = copy_workflow(tmp_path / "wf")
    script = workdir / "workflow/scripts/classes.py"
    script.write_text(script.read_text()
                      + "\n\ndef later():\n    from balanced_experts.metrics import reliability_bins\n")
    splits = workdir / f"src/{LIBRARY}/splits.py"
    splits.write_text(splits.read_text() + "\n\ndef later():\n    from .baselines import softmax\n")
    code = declared_code(workdir)["classes"]["code"]
    assert {f"src/{LIBRARY}/metrics.py", f"src/{LIBRARY}/baselines.py"} <= set(code)
    assert set(code[1:]) == import_closure(workdir, "workflow/scripts/classes.py")


def test_each_program_reads_the_job_once_at_the_top_of_its_main():
    """A stage program unpacks Snakemake's `snakemake` object in `main(snakemake)`, up to the
    line that opens the job's log, into plain values that it passes on: no other function
    reads it, so each step can be called with plain arguments."""
    for script in sorted((REPO / "workflow/scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        assert [a.arg for a in main.args.args] == ["snakemake"], script.name
        # Outside main, only the module's last statement: `if __name__ == "__main__": main(snakemake)`.
        in_main = {id(n) for n in ast.walk(main)}
        outside = [n for n in ast.walk(tree)
                   if isinstance(n, ast.Name) and n.id == "snakemake" and id(n) not in in_main]
        assert ast.unparse(tree.body[-1]) == "if __name__ == '__main__':\n    main(snakemake)", script.name
        assert len(outside) == 1, script.name
        opens_log = min(n.lineno for n in ast.walk(main)  # (a training stage's, in start_training_job)
                        if isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("get_logger",
                                                                                        "start_training_job"))
        reads = [n.lineno for n in ast.walk(main) if isinstance(n, ast.Name) and n.id == "snakemake"]
        assert max(reads) <= opens_log, f"{script.name}:{max(reads)} reads `snakemake` after the log is open"


# Import name -> conda-forge package name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "PIL": "pillow", "yaml": "pyyaml", "matplotlib": "matplotlib-base"}
# conda-forge package name -> PyPI name, where they differ.
PYPI_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != LIBRARY}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower() for requirement in requirements}


def test_the_stages_conda_environment_holds_every_package_they_import():
    """`--sdm conda` runs each stage in workflow/envs/pytorch.yaml: it must provide every
    third-party package a stage program or a library module it runs imports, and name only
    packages that pyproject.toml (the pip install) also depends on."""
    env = _requirement_names(yaml.safe_load((REPO / "workflow/envs/pytorch.yaml").read_text())["dependencies"])
    imported = set()
    for script in sorted((REPO / "workflow/scripts").glob("*.py")):
        files = [script, *(REPO / file for file in import_closure(REPO, str(script.relative_to(REPO))))]
        imported |= {CONDA_NAMES.get(name, name).lower() for file in files for name in _third_party_imports(file)}
    assert {"pytorch", "pyarrow", "pandas"} <= imported  # the scan sees the imports at all
    assert imported <= env, f"missing from workflow/envs/pytorch.yaml: {sorted(imported - env)}"
    pyproject = (REPO / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    pip = _requirement_names(re.findall(r'"([^"]+)"', dependencies))
    assert {PYPI_NAMES.get(name, name) for name in env - {"python"}} <= pip


def test_a_job_may_use_cuda_when_asked_or_when_auto_finds_a_gpu():
    assert ExecutionSettings(device="cuda").may_use_cuda() and ExecutionSettings(device="cuda:1").may_use_cuda()
    assert not ExecutionSettings(device="cpu").may_use_cuda()
    has_gpu = any(Path("/dev").glob("nvidia[0-9]*"))
    assert ExecutionSettings(device="auto").may_use_cuda() == has_gpu


# The stages that read and write no model: their jobs must start without torch, whose import
# alone takes seconds of CPU (each of the other jobs pays it once).
TORCH_FREE_STAGES = ["resolved_config", "synthetic_data", "cifar_data", "classes", "image_cache",
                     "summary", "aggregate", "compare"]


@pytest.mark.parametrize("stage", TORCH_FREE_STAGES)
def test_a_stage_without_models_starts_without_torch(stage):
    program = REPO / "workflow" / "scripts" / f"{stage}.py"
    imports = [node for node in ast.parse(program.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    code = "\n".join(ast.unparse(node) for node in imports) + "\nimport sys\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO / "src")})
    assert result.stdout.strip() == "False", f"{program.name}'s imports load torch"
