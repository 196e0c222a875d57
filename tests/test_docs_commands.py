"""Every shell command of README.md and docs/*.md, run as written after the Quick start.

What counts as a command: the lines of fenced ```bash, ```sh and ```console blocks.
- A line that ends in a backslash continues on the next one (joined with one space).
- In a ```console block only lines that start with "$ " are commands (the prompt is
  dropped; the other lines are output); ```bash and ```sh blocks hold no prompts.
- A "#" that starts a word outside quotes starts a comment, which is no part of the
  command; blank and comment-only lines are skipped.
- A ```yaml block whose first line is "# <name>.yaml" is a file the commands use (the
  docs tell the reader to write it): it is written into the work folder first.

Every command needs an entry in HOW (the command with its comment stripped and its
spaces collapsed), saying how it is run and why; a documented command without one fails
the test, and so does an entry no document holds any more. How:
- REAL: run as written.
- DRY: run with `-n` added to every `.venv/bin/snakemake` call (a real run is too long,
  or needs data that is not here); the rest of an `&&` chain after such a call, which
  reads what the real run would write, is not run.
- PARSE: only its options are parsed: a Snakemake call with `-n` (as DRY; the Slurm
  profile with its plugin installed), a Python program up to its `parse_args()`, a bash
  script with `bash -n` and its options looked up in it.
- CI: run by .ci/run (an install, the test suite itself, the lint checks); the entry
  names the lines of .ci/run that do it, and the test checks that they are there.
- INSTALL: not run (it would install into the running environment); the extras it
  names must exist in pyproject.toml. An install at the head of an `&&` chain of another
  mode is checked the same way and dropped: the environment is already there.

Where a block runs (one folder for all its commands, in order; an entry's `where`):
- "run": a copy of the finished tiny run (conftest's `tiny_run`), where the tests' tiny
  dataset stands in for the default one: `results/synthetic` links to `results/tiny`.
- "plan": a fresh copy of the workflow with the repository's config.yaml and docs/, no
  results, the shared Places-LT and ImageNet-LT list files where config.yaml looks for
  them (data/places_lt, data/imagenet_lt), generated lists of iNaturalist 2018's shape
  (data/inaturalist_lists), and a small JPEG dataset as "Your own data" describes it
  (data/mydata); never any image root of the presets.
- "repo": the checkout itself, for PARSE of scripts (nothing is written).

`.venv/bin/` in a command is the running interpreter's bin folder, and the commands run
with no venv on PATH, so a bare `snakemake` fails as it would for a reader. .ci/run runs
the README's blocks (`-k README`) with DOCS_COMMANDS_BIN naming a venv made by the Quick
start's install alone; there the run folder starts empty and the Quick start's own
command makes the tiny run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, copy_workflow, jpeg_dataset
from realdata import make_inaturalist_lists

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "console"}
BIN = Path(os.environ.get("DOCS_COMMANDS_BIN") or Path(sys.executable).parent).absolute()

REAL, DRY, PARSE, CI, INSTALL = "real", "dry run", "parse only", "run by .ci/run", "install, not run"


@dataclass(frozen=True)
class How:
    mode: str
    why: str
    where: str | None = None  # "run", "plan", "repo"; None: wherever its block runs
    expect: tuple[str, ...] = ()  # in the output of a command that succeeds
    files: tuple[tuple[str, str], ...] = ()  # (path, text it holds) after the command
    fails_with: str = ""  # the one-line data error it stops with here (also in the docs)
    needs: tuple[str, ...] = ()  # programs outside the venv; without them, the left side of the pipe
    modules: tuple[str, ...] = ()  # Python packages beyond the install (skipped without them)
    ci: tuple[str, ...] = ()  # CI: the lines of .ci/run that run it


SLOW_DEFAULT = "the default dataset's run: minutes"
NO_IMAGES = "the preset's images are not here (nothing is downloaded)"


def root_error(dataset="places", root="data/places365"):
    return f"config key datasets.{dataset}.data.root: {root} is not an existing folder"


HOW = {
    # README.md
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/snakemake --cores 2 && "
    "column -s, -t results/synthetic/report.csv":
        How(REAL, "the Quick start: its install is .ci/run's (or the test's environment); the run and the table "
            "on the tiny dataset", where="run", expect=("experts_calibrated",)),
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test,lint]" && .venv/bin/python -m pytest -q':
        How(CI, "the test suite cannot run inside itself",
            ci=('python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[test,lint]"',
                ".venv/bin/python -m pytest -q")),
    ".venv/bin/snakemake --lint && .venv/bin/snakefmt --check . && .venv/bin/ruff check .":
        How(CI, "the checks run on the checkout (a copy has no pyproject.toml for ruff's settings)",
            ci=(".venv/bin/snakemake --lint && .venv/bin/snakefmt --check . && .venv/bin/ruff check .",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/comparison.csv --configfile docs/synthetic_comparison.yaml":
        How(DRY, "three seeds and two variants of the default dataset: 9 min 40 s", where="plan",
            expect=("variants/imagenet_experts", "seed=2")),
    ".venv/bin/snakemake --report report.html":
        How(REAL, "the HTML report of the finished tiny run", where="run", files=(("report.html", "report.csv"),)),
    ".venv/bin/snakemake --rulegraph mermaid-js":
        How(REAL, "draws the rule graph: seconds", expect=("train_expert",)),
    ".venv/bin/snakemake --cores all results/mydata/report.csv --configfile docs/mydata.yaml":
        How(DRY, "docs/mydata.yaml's small-data recipe on the user's JPEG files (data/mydata here): minutes of "
            "ResNet-10 at 112 px; the plan proves the paths, the lists and every listed image are read as the "
            "text says", where="plan", expect=("train_expert",)),
    # docs/cluster.md
    '.venv/bin/pip install -e ".[slurm]"':
        How(INSTALL, "installs the Slurm executor plugin"),
    ".venv/bin/snakemake --workflow-profile profiles/slurm results/places/report.csv "
    "--default-resources slurm_partition=gpu slurm_account=myproject":
        How(PARSE, "needs a Slurm cluster; with the plugin installed the profile and the options parse, and the "
            "DAG stops at the missing Places-LT images", where="plan", fails_with=root_error(),
            modules=("snakemake_executor_plugin_slurm",)),
    # docs/configuration.md, docs/seeds-and-variants.md
    "echo 'defaults: {seeds: [0, 1, 2]}' > seeds.yaml":
        How(REAL, "writes a config file"),
    "echo 'datasets: {synthetic: {variants: {few_open4: {experts: {few: {open_ratio: 4}}}}}}' > few_open4.yaml":
        How(REAL, "writes a config file"),
    ".venv/bin/snakemake --cores 2 results/synthetic/comparison.csv --configfile seeds.yaml few_open4.yaml":
        How(DRY, SLOW_DEFAULT + "; the plan shows both files were read", where="plan",
            expect=("seed=2", "variants/few_open4")),
    ".venv/bin/snakemake --cores 2 --configfile seeds.yaml && column -s, -t results/synthetic/report.csv":
        How(DRY, SLOW_DEFAULT + " (three seeds)", where="plan", expect=("seed=2",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/variants/few_open4/report.csv --configfile variants.yaml":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("variants/few_open4",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/comparison.csv --configfile variants.yaml":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("variants/no_prior",)),
    # docs/multi_expert.md
    "echo 'datasets: {synthetic: {seeds: [0, 1, 2]}}' > seeds3.yaml":
        How(REAL, "writes a config file"),
    ".venv/bin/snakemake --cores 2 --configfile docs/synthetic_all_peers.yaml seeds3.yaml":
        How(DRY, "three seeds of the default dataset with every peer: most of an hour on 2 cores", where="plan",
            expect=("seed=2", "rule sade_test_time")),
    # docs/datasets.md
    ".venv/bin/snakemake --cores 1 results/places/classes.csv":
        How(REAL, "reads the shared Places-LT train list alone: seconds", where="plan",
            files=(("results/places/classes.csv", "class_id,train_count,split"),)),
    ".venv/bin/snakemake --cores 16 results/imagenet/report.csv":
        How(DRY, NO_IMAGES, where="plan", fails_with=root_error("imagenet", "data/imagenet")),
    ".venv/bin/snakemake --cores 16 results/places/report.csv":
        How(DRY, NO_IMAGES, where="plan", fails_with=root_error()),
    ".venv/bin/snakemake --cores 16 results/imagenet_x50/report.csv":
        How(DRY, NO_IMAGES, where="plan", fails_with=root_error("imagenet_x50", "data/imagenet")),
    ".venv/bin/python -m balanced_experts.holdout data/inaturalist_lists/iNaturalist18_train.txt "
    "--train-out data/inaturalist_lists/iNaturalist18_train_kept.txt "
    "--val-out data/inaturalist_lists/iNaturalist18_train_heldout.txt":
        How(REAL, "holds the val list out of generated lists of iNaturalist 2018's shape: a second", where="plan",
            files=(("data/inaturalist_lists/iNaturalist18_train_heldout.txt", "train_val2018/"),)),
    ".venv/bin/snakemake --cores 1 results/inaturalist/classes.csv":
        How(REAL, "the classes of the kept list: seconds", where="plan",
            files=(("results/inaturalist/classes.csv", "class_id,train_count,split"),)),
    ".venv/bin/snakemake --cores 16 results/inaturalist/report.csv":
        How(DRY, NO_IMAGES, where="plan", fails_with=root_error("inaturalist", "data/inaturalist2018")),
    ".venv/bin/snakemake --cores 4 results/cifar100_lt/report.csv":
        How(DRY, "the CIFAR-100 archive is not here (nothing is downloaded)", where="plan",
            fails_with="config key datasets.cifar100_lt.data.cifar.archive: data/cifar/cifar-100-python.tar.gz "
                       "does not exist"),
    # docs/development.md
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test,lint]"':
        How(INSTALL, "the development install (.ci/run makes it)"),
    ".venv/bin/snakemake --cores 2 --configfile tests/tiny.yaml && column -s, -t results/tiny/report.csv":
        How(REAL, "the tiny config over the finished tiny run: nothing to do, then the table", where="run",
            expect=("experts_calibrated",)),
    # docs/gpu.md
    "bash bench/gpu.sh .venv/bin/python":
        How(PARSE, "needs a GPU (the device check runs it)", where="repo"),
    "bash bench/gpu.sh --cpu .venv/bin/python":
        How(PARSE, "92 s alone, minutes on a shared machine: too long for the suite", where="repo"),
    # docs/outputs.md
    ".venv/bin/snakemake --dag | dot -Tsvg > dag.svg":
        How(REAL, "draws the tiny run's DAG", where="run", needs=("dot",), files=(("dag.svg", "<svg"),)),
    # docs/performance.md
    ".venv/bin/python bench/run.py":
        How(PARSE, "the whole bench: many minutes", where="repo"),
    ".venv/bin/python bench/run.py --skip-pipeline --skip-models":
        How(PARSE, "still minutes of calibration, Parquet and loader timing", where="repo"),
    # docs/running.md
    ".venv/bin/snakemake --cores 2 results/synthetic/report.csv":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("rule aggregate",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/seed0/report.csv":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("rule report",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/seed0/models/base/weights.pt":
        How(DRY, "the default dataset's base model: a minute or two", where="plan", expect=("rule train_base",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/seed0/logits/few/test.parquet":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("model=few, split=test",)),
    ".venv/bin/snakemake --cores 2 results/synthetic/comparison.csv":
        How(DRY, SLOW_DEFAULT, where="plan", expect=("rule compare",)),
    ".venv/bin/snakemake -n results/synthetic/report.csv":
        How(REAL, "a dry run as written: what a fresh checkout would run", where="plan",
            expect=("This was a dry-run",)),
    # docs/troubleshooting.md
    ".venv/bin/snakemake --unlock":
        How(REAL, "removes a lock (there is none here): seconds", where="run", expect=("Unlock",)),
}


# -- reading the docs ------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    language: str
    body: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def fenced_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file (indented ones too, as in a list item)."""
    lines, found, i = doc.read_text().splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening:
            indent, language = opening.groups()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            found.append(Block(doc, i + 1, language, tuple(line[len(indent):] for line in lines[i + 1:end])))
            i = end
        i += 1
    return found


def strip_comment(line: str) -> str:
    """The line without its shell comment: from a '#' that starts a word outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(block: Block) -> list[str]:
    """The block's commands, continuations joined, prompts and comments dropped."""
    lines = list(block.body)
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    else:
        assert not any(line.startswith("$ ") for line in lines), \
            f"{block.id}: a '$ ' prompt in a ```{block.language} block: use ```console for prompts"
    found, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        command = strip_comment(pending + line.strip())
        pending = ""
        if command:
            found.append(command)
    assert not pending, f"{block.id}: the last line continues with a backslash"
    return found


def key(command: str) -> str:
    return " ".join(command.split())


def shell_blocks() -> list[Block]:
    return [block for doc in DOCS for block in fenced_blocks(doc) if block.language in SHELL_LANGUAGES]


def named_files() -> dict[str, str]:
    """The ```yaml blocks that open with '# <name>.yaml': files the commands use."""
    files: dict[str, str] = {}
    for doc in DOCS:
        for block in fenced_blocks(doc):
            name = re.fullmatch(r"# (\S+\.ya?ml)", block.body[0].strip()) if block.body else None
            if block.language == "yaml" and name:
                text = "\n".join(block.body) + "\n"
                assert files.get(name.group(1), text) == text, f"{block.id}: {name.group(1)} differs elsewhere"
                files[name.group(1)] = text
    return files


def docs_text() -> str:
    return " ".join(" ".join(doc.read_text().split()) for doc in DOCS)


# -- running a command -----------------------------------------------------------------------

VENV_PATH = re.compile(r"(?<![\w/.-])\.venv/bin/")


def chain(command: str) -> list[str]:
    """The parts of a command's `&&` chain."""
    parts = [part.strip() for part in command.split(" && ")]
    for part in parts:
        shlex.split(part)  # balanced quotes: the split did not cut a quoted string
    return parts


def is_install(part: str) -> bool:
    return part.startswith("python3 -m venv ") or part.startswith(".venv/bin/pip install ")


def installed_extras(part: str) -> set[str]:
    """The extras an install names (`-e ".[a,b]"`); none for `python3 -m venv`."""
    extras = set()
    for word in shlex.split(part):
        match = re.fullmatch(r"\.\[([\w,-]+)\]", word)
        if match:
            extras.update(match.group(1).split(","))
    return extras


def without_installs(command: str) -> str:
    parts = chain(command)
    return " && ".join(part for part in parts if not is_install(part))


def dry(command: str) -> str:
    """`-n` after every `.venv/bin/snakemake`, and the chain cut after the last such call."""
    parts = chain(command)
    calls = [i for i, part in enumerate(parts) if part.startswith(".venv/bin/snakemake ")]
    assert calls, f"no .venv/bin/snakemake call to dry-run in {command!r}"
    return " && ".join(part.replace(".venv/bin/snakemake ", ".venv/bin/snakemake -n ", 1)
                       if i in calls else part for i, part in enumerate(parts[:calls[-1] + 1]))


def environment() -> dict[str, str]:
    """The test's environment without any venv on PATH: `.venv/bin/` is spelt out."""
    path = [folder for folder in os.environ.get("PATH", "").split(os.pathsep)
            if folder and not (Path(folder) / "snakemake").exists() and Path(folder).absolute() != BIN]
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return dict(env, PATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")


def run_shell(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", VENV_PATH.sub(f"{BIN}/", command)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=environment())


def parse_script(command: str) -> subprocess.CompletedProcess:
    """PARSE of a bash script (`bash -n`, each option named in it) or a Python program (run
    up to its `parse_args()`, which must accept the options)."""
    words = shlex.split(command)
    if words[0] == "bash":
        script = REPO / words[1]
        result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        unknown = [word for word in words[2:] if word.startswith("-") and word not in script.read_text()]
        assert not unknown, f"{words[1]} does not know {unknown}"
        for word in words[2:]:
            if VENV_PATH.match(word):
                assert (BIN / word.removeprefix(".venv/bin/")).exists(), f"no {word} in {BIN}"
        return result
    assert words[0] == ".venv/bin/python", f"PARSE of {command!r}: a bash script or a Python program"
    stop_after_parsing = textwrap.dedent("""
        import argparse, runpy, sys
        parse = argparse.ArgumentParser.parse_args
        def parse_and_stop(self, *args, **kwargs):
            parse(self, *args, **kwargs)
            print("options parsed")
            raise SystemExit(0)
        argparse.ArgumentParser.parse_args = parse_and_stop
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    result = subprocess.run([BIN / "python", "-c", stop_after_parsing, *words[1:]], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=environment())
    assert "options parsed" in result.stdout, result.stdout + result.stderr
    return result


def check(command: str, how: How, result: subprocess.CompletedProcess, cwd: Path) -> None:
    out = result.stdout + result.stderr
    shown = f"{command}\n(in {cwd}, rc {result.returncode})\n{out[-6000:]}"
    if how.fails_with:
        assert result.returncode != 0 and how.fails_with in out, f"expected the data error {how.fails_with!r}:\n{shown}"
        assert " ".join(how.fails_with.split()) in docs_text(), f"the docs do not show the line {how.fails_with!r}"
        missing = re.match(r"config key \S+: (\S+)", how.fails_with).group(1)
        assert not (cwd / missing).exists(), f"{missing} exists here: the error is not the data's absence"
        return
    assert result.returncode == 0, f"failed:\n{shown}"
    for text in how.expect:
        assert text in out, f"{text!r} not in the output of:\n{shown}"
    for path, text in how.files:
        assert text in (cwd / path).read_text(errors="replace"), f"{path} lacks {text!r} after:\n{shown}"


def run_command(command: str, how: How, cwd: Path) -> None:
    if how.mode == PARSE and how.where == "repo":
        check(command, how, parse_script(command), cwd)
        return
    for part in chain(command):
        if is_install(part):
            assert installed_extras(part) <= EXTRAS, f"{part}: no such extra in pyproject.toml"
    for module in how.modules:
        found = subprocess.run([BIN / "python", "-c", f"import {module}"], capture_output=True).returncode == 0
        if not found:
            pytest.skip(f"{module} is not installed in {BIN}")
    command = without_installs(command)
    if how.mode in (DRY, PARSE):
        command = dry(command)
    missing = [tool for tool in how.needs if shutil.which(tool, path=environment()["PATH"]) is None]
    if missing:
        # The workflow's side of the pipe still runs; what the missing program would draw is its own affair.
        command = command.split(" | ")[0]
        how = How(how.mode, how.why)
    check(command, how, run_shell(command, cwd), cwd)


def _extras() -> set[str]:
    """The names of pyproject.toml's [project.optional-dependencies] (no tomllib on Python 3.10)."""
    section = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1]
    section = re.split(r"(?m)^\[", section, maxsplit=1)[0]
    return set(re.findall(r"(?m)^([\w-]+)\s*=", section))


EXTRAS = _extras()


# -- the folders -----------------------------------------------------------------------------

def write_named_files(folder: Path) -> None:
    for name, text in named_files().items():
        (folder / name).write_text(text)


@pytest.fixture(scope="module")
def run_folder(request, tmp_path_factory) -> Path:
    """The finished tiny run, `results/synthetic` standing in; with DOCS_COMMANDS_BIN, empty."""
    folder = tmp_path_factory.mktemp("docs_run") / "checkout"
    if os.environ.get("DOCS_COMMANDS_BIN"):
        copy_workflow(folder)
    else:
        shutil.copytree(request.getfixturevalue("tiny_run"), folder, symlinks=True)
    shutil.copytree(REPO / "docs", folder / "docs")
    (folder / "tests").mkdir(exist_ok=True)
    shutil.copy2(REPO / "tests/tiny.yaml", folder / "tests/tiny.yaml")
    (folder / "results").mkdir(exist_ok=True)
    (folder / "results/synthetic").symlink_to("tiny")
    write_named_files(folder)
    return folder


@pytest.fixture(scope="module")
def plan_folder(tmp_path_factory) -> Path:
    """A fresh checkout after the Quick start's install: config.yaml, docs/, the user's data."""
    import yaml

    folder = copy_workflow(tmp_path_factory.mktemp("docs_plan") / "checkout",
                           yaml.safe_load((REPO / "config.yaml").read_text()))
    shutil.copytree(REPO / "docs", folder / "docs")
    (folder / "data").mkdir()
    for lists in ("places_lt", "imagenet_lt"):
        if (SHARED_DATA / lists).exists():
            (folder / "data" / lists).symlink_to(SHARED_DATA / lists)
    jpeg_dataset(folder / "data/mydata")
    make_inaturalist_lists(folder / "data/inaturalist_lists")  # the official lists' shape, no images
    write_named_files(folder)
    return folder


def rule(command: str) -> How:
    how = HOW.get(key(command))
    assert how, f"a new documented command needs a rule here (HOW): {command}"
    return how


def block_folder(block: Block) -> str | None:
    """Where the block's commands run: the one folder their rules name, "run" when none
    does, None when nothing in it is run here (CI and INSTALL only)."""
    run_here = [rule(command) for command in commands(block) if rule(command).mode not in (CI, INSTALL)]
    wheres = {how.where for how in run_here} - {None}
    assert len(wheres) <= 1, f"{block.id} mixes folders {sorted(wheres)}: split the block or change a rule"
    return wheres.pop() if wheres else "run" if run_here else None


# -- the tests -------------------------------------------------------------------------------

def test_every_documented_command_has_a_rule_and_every_rule_a_command():
    documented = {key(command): block.id for block in shell_blocks() for command in commands(block)}
    unruled = [f"{where}: {command}" for command, where in documented.items() if command not in HOW]
    assert not unruled, "a new documented command needs a rule here (HOW):\n" + "\n".join(unruled)
    stale = [command for command in HOW if command not in documented]
    assert not stale, "rules for commands no document holds any more:\n" + "\n".join(stale)


def test_install_commands_name_existing_extras():
    for block in shell_blocks():
        for command in commands(block):
            for part in chain(command):
                if is_install(part):
                    assert installed_extras(part) <= EXTRAS, f"{block.id}: {part}: extras are {sorted(EXTRAS)}"


def test_ci_runs_what_the_rules_say_it_runs():
    ci = (REPO / ".ci/run").read_text()
    for command, how in HOW.items():
        if how.mode == CI:
            assert how.ci and all(line in ci for line in how.ci), f".ci/run lacks {how.ci} for {command!r}"
    # The README's other commands: this file, after the Quick start's install alone.
    assert re.search(r'DOCS_COMMANDS_BIN="\$plain/venv/bin" \.venv/bin/python -m pytest .*'
                     r'tests/test_docs_commands\.py -k README', ci)
    assert 'python3 -m venv "$plain/venv" && "$plain/venv/bin/pip" install --quiet -e .' in ci


INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
VENV_TOOLS = ("snakemake", "snakefmt", "ruff", "pytest", "pip", "python")


def test_inline_commands_name_the_venv():
    """A command in running text is copied as well: `.venv/bin/snakemake ...`, never a bare one."""
    bare = []
    for doc in DOCS:
        text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", doc.read_text())  # fenced blocks: collected above
        for span in INLINE_CODE.findall(" ".join(text.split())):
            if span.split()[0] in VENV_TOOLS and len(span.split()) > 1:
                bare.append(f"{doc.relative_to(REPO)}: `{span}`")
    assert not bare, "write .venv/bin/<tool> in these:\n" + "\n".join(bare)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
            elif anchor and linked.suffix == ".md":
                body = re.sub(r"(?ms)^\s*```.*?^\s*```", "", linked.read_text())
                if anchor not in {_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", body)}:
                    broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_outputs_page_names_every_file_and_report_column():
    """docs/outputs.md against the code: every file template of balanced_experts.paths, and
    the columns of the report and the shifted-distribution tables, in that order."""
    from balanced_experts import paths
    from balanced_experts.over_seeds import REPORT_COLUMNS
    from balanced_experts.shift import SHIFT_COLUMNS

    page = (REPO / "docs/outputs.md").read_text()
    folders = ("results/{setting}/seed{seed}/", "results/{setting}/", "results/{dataset}/")
    unnamed = []
    for name, template in vars(paths).items():
        if not (name.isupper() and isinstance(template, str) and template.startswith("results/")):
            continue
        relative = next((template.removeprefix(f) for f in folders if template.startswith(f)), "")
        if not Path(relative).suffix:
            continue  # a folder
        spelt = {relative.replace("{model}", "<model>").replace("{split}", "<split>"),
                 relative.replace("{split}", "{train,val,test}")}
        if relative.startswith("plots/"):
            spelt.add(Path(relative).stem)  # the plots are named in the tree
        if not any(form in page for form in spelt):
            unnamed.append(f"{name} = {template!r}")
    assert not unnamed, "docs/outputs.md does not name:\n" + "\n".join(unnamed)
    for columns in (REPORT_COLUMNS, SHIFT_COLUMNS):
        assert f"`{', '.join(columns)}`" in page, f"docs/outputs.md lacks the columns {columns}"


def test_files_the_docs_make_are_ignored_by_git():
    made = set(named_files())
    for block in shell_blocks():
        for command in commands(block):
            made.update(re.findall(r"> (\S+)", command))
            made.update(re.findall(r"--report (\S+)", command))
    made.add("data/mydata/train.txt")  # "Your own data": the user's files under data/
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in sorted(made):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
        assert ignored, f"{path}, which the docs have the reader make, is not in .gitignore"


@pytest.mark.slow
@pytest.mark.parametrize("block", shell_blocks(), ids=lambda block: block.id)
def test_documented_commands_run_as_written(block, request):
    documented = commands(block)
    where = block_folder(block)
    if where is None:
        pytest.skip(f"{block.id}: " + "; ".join(f"{rule(c).mode}: {rule(c).why}" for c in documented))
    if where == "plan" and not (SHARED_DATA / "places_lt").exists() and any(
            "results/places/" in command and not rule(command).fails_with for command in documented):
        pytest.skip(f"the shared Places-LT lists are not here ({SHARED_DATA})")
    cwd = REPO if where == "repo" else request.getfixturevalue(f"{where}_folder")
    for command in documented:
        if rule(command).mode not in (CI, INSTALL):
            run_command(command, rule(command), cwd)
