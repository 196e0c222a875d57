"""One description of the artifacts, checked against the real workflow: every file a job
writes is a template of balanced_experts.paths (and the rules spell no path of their own),
and each stage's declared upstream in experiments.STAGES is what its rule's jobs read, as a
real Snakemake dry run plans them on the tiny config with variants."""

import dataclasses
import re
from pathlib import Path
from string import Formatter

import pytest

from balanced_experts import paths
from balanced_experts.experiments import STAGES, Experiments, job_key
from conftest import REPO, copy_workflow, snakemake, tiny_config

# -- the templates --------------------------------------------------------------------------


def test_a_pattern_keeps_every_field_it_is_not_given_as_a_wildcard():
    assert paths.pattern(paths.LOGITS) == paths.LOGITS == "results/{setting}/seed{seed}/logits/{model}/{split}.parquet"
    assert paths.pattern(paths.WEIGHTS, model="{expert}") == "results/{setting}/seed{seed}/models/{expert}/weights.pt"
    assert paths.pattern(paths.DATA_LIST, split="train") == "results/{dataset}/data/train.txt"
    assert paths.WEIGHTS.format(setting="tiny/variants/v", seed=1, model="few") == \
        "results/tiny/variants/v/seed1/models/few/weights.pt"
    with pytest.raises(KeyError, match="has no field expert"):
        paths.pattern(paths.WEIGHTS, expert="few")


def test_a_stage_file_lies_in_the_folder_of_the_setting_that_owns_it():
    experiments = Experiments.from_config(variant_config())
    few, many = (experiments.stage_file(paths.WEIGHTS, "train_expert", "tiny/variants/fewlr", 1, expert, model=expert)
                 for expert in ("few", "many"))
    assert (few, many) == ("results/tiny/variants/fewlr/seed1/models/few/weights.pt",
                           "results/tiny/seed1/models/many/weights.pt")
    # A stage run once per setting: its template holds no seed.
    assert experiments.stage_file(paths.CLASSES, "classes", "tiny/variants/splits", 1) == \
        "results/tiny/variants/splits/classes.csv"


def test_the_rules_spell_no_result_path():
    """A path is spelled once, in balanced_experts.paths: no rules file names one itself."""
    for file in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert "results/" not in code, f"{file.relative_to(REPO)}:{number}: {line.strip()}"


# -- the jobs of a real dry run -------------------------------------------------------------


@dataclasses.dataclass
class Job:
    rule: str
    wildcards: dict[str, str]
    inputs: list[str]
    outputs: list[str]  # with its log and benchmark

    @property
    def stage(self) -> tuple[str, str | None]:
        """``(stage, key)`` as experiments.STAGES names it (a rule is named by its stage)."""
        return self.rule, job_key(self.wildcards)


_FIELD = re.compile(r"^    (input|output|log|benchmark|wildcards): (.*)$")


def dry_run_jobs(workdir: Path) -> list[Job]:
    """Every job a dry run from scratch plans (``all`` left out), with its files."""
    result = snakemake(workdir, "-n", "--cores", "1")
    jobs = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        header = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if header:
            jobs.append(Job(header.group(1), {}, [], []))
            continue
        field = _FIELD.match(line)
        if field and jobs:
            name, value = field.groups()
            items = value.split(", ")
            if name == "wildcards":
                jobs[-1].wildcards = dict(item.split("=", 1) for item in items)
            else:
                (jobs[-1].inputs if name == "input" else jobs[-1].outputs).extend(items)
    return [job for job in jobs if job.rule != "all"]


def stage_reads(jobs: list[Job]) -> list[tuple[Job, set[tuple[str, str | None]]]]:
    """Each job of a stage with the ``(stage, key)`` of the jobs whose outputs it reads.
    Of a job that is no stage, only the data jobs (one per dataset, shared by every setting
    by construction) may be read."""
    writer = {file: job for job in jobs for file in job.outputs}
    reads = []
    for job in jobs:
        if job.rule not in STAGES:
            continue
        upstream = [writer[file] for file in job.inputs if file in writer]
        others = {up.rule for up in upstream if up.rule not in STAGES and "dataset" not in up.wildcards}
        assert not others, f"{job.rule} reads the outputs of {others}, which is not a stage in STAGES"
        reads.append((job, {up.stage for up in upstream if up.rule in STAGES}))
    return reads


def mismatches(reads, stages) -> list[str]:
    """Where a job reads other stages than its stage's ``upstream`` in ``stages`` declares."""
    found = []
    for job, read in reads:
        declared = set(stages[job.rule].upstream(job.stage[1]))
        if read != declared:
            found.append(f"{job.rule} {job.wildcards}: reads {sorted(read, key=str)}, "
                         f"STAGES says {sorted(declared, key=str)}")
    return found


def variant_config() -> dict:
    """The tiny config with two variants: one retrains the few expert on the shared base
    model, one has class splits of its own (new experts; everything else shared). Every
    setting preloads: one that does not reads no image cache, which its upstream names all
    the same (harmless: such a setting's `input` slice differs, so it owns its models)."""
    config = tiny_config()
    config["datasets"]["tiny"]["variants"] = {"fewlr": {"experts": {"few": {"lr": 0.03}}},
                                              "splits": {"class_splits": {"many_threshold": 20}}}
    return config


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> list[Job]:
    return dry_run_jobs(copy_workflow(tmp_path_factory.mktemp("artifacts") / "wf", variant_config()))


# What a field's value may be: a setting is a dataset or <dataset>/variants/<variant>.
_VALUES = {"setting": r"[^/]+(?:/variants/[^/]+)?", "seed": r"\d+"}


def _template_regex(template: str) -> re.Pattern:
    regex = ""
    for text, field, _, _ in Formatter().parse(template):
        regex += re.escape(text) + (f"(?:{_VALUES.get(field, '[^/]+')})" if field is not None else "")
    return re.compile(regex)


@pytest.mark.slow
def test_every_file_a_job_writes_is_a_template_and_every_template_is_written(planned):
    folders = (paths.RESULTS, paths.DATASET, paths.SETTING, paths.REPLICATE)
    files = {name: value for name, value in vars(paths).items() if name.isupper() and value not in folders
             and name != "DATA"}  # DATA: the folder the list files' paths start from
    templates = [*files.values(), *(f(folder, "{job}") for folder in folders for f in (paths.log, paths.benchmark))]
    regexes = {template: _template_regex(template) for template in templates}
    written = [file for job in planned for file in job.outputs]
    assert {"results/tiny/comparison.csv", "results/tiny/variants/splits/seed0/models/few/weights.pt"} <= set(written)
    for file in written:
        assert any(regex.fullmatch(file) for regex in regexes.values()), f"{file}: no template in paths"
    for name, template in files.items():
        assert any(regexes[template].fullmatch(file) for file in written), f"paths.{name}: no job writes {template}"


@pytest.mark.slow
def test_each_stage_reads_exactly_the_stages_its_upstream_declares(planned):
    reads = stage_reads(planned)
    assert {job.rule for job, _ in reads} == set(STAGES)
    # The variants' jobs read shared outputs from the main settings' folder: the same stages.
    assert any(job.wildcards["setting"] == "tiny/variants/fewlr" and read for job, read in reads)
    assert mismatches(reads, STAGES) == []


@pytest.mark.slow
def test_an_upstream_stage_that_no_input_reads_is_a_mismatch(planned):
    declared = STAGES["train_decoupled"].upstream
    stages = dict(STAGES, train_decoupled=dataclasses.replace(
        STAGES["train_decoupled"], upstream=lambda key: [*declared(key), ("classes", None)]))
    found = mismatches(stage_reads(planned), stages)
    assert found and all(line.startswith("train_decoupled ") for line in found)


@pytest.mark.slow
def test_an_input_that_the_upstream_does_not_declare_is_a_mismatch(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", tiny_config())
    rules = workdir / "workflow/rules/train.smk"
    text = rules.read_text()
    decoupled = text.index("rule train_decoupled:")
    rules.write_text(text[:decoupled] + text[decoupled:].replace(
        "        base=model_file(", "        classes=classes_table,\n        base=model_file(", 1))
    found = mismatches(stage_reads(dry_run_jobs(workdir)), STAGES)
    assert len(found) == 2 and all(line.startswith("train_decoupled ") for line in found)  # cRT, LWS
    assert all("('classes', None)" in line for line in found)
