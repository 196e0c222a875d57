"""tests/job_server.py runs a Snakemake job as ``python SCRIPT`` runs it: the job sees itself
as the real interpreter shows it, and ends with the same status and output.

Each rule runs twice: once forked by the job server (one thread: the environment its modules
were loaded in) and once by the real interpreter (two threads: Snakemake sets
OMP_NUM_THREADS=2, so the client runs Python itself).
"""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import snakemake

SNAKEFILE = """
THREADS = {"forked": 1, "real": 2}

rule view:
    output: "{how}/view.json"
    threads: lambda wildcards: THREADS[wildcards.how]
    script: "view.py"

rule ends:
    output: "{how}/{end}.txt"
    threads: lambda wildcards: THREADS[wildcards.how]
    resources: alone=1
    script: "{wildcards.end}.py"
"""

VIEW = """
import json, os, sys
view = {
    "name": __name__, "spec": __spec__ is None,
    "file": __file__, "written": __real_file__ == sys.argv[0],  # the copy Snakemake wrote and runs
    "argv": len(sys.argv), "path0": sys.path[0] == os.path.dirname(os.path.abspath(__real_file__)),
    "pythonpath": [p for p in sys.path if p.endswith("on_path")], "cwd": os.getcwd(),
    "stdin": sys.stdin.read(),
    "modules": "torch" in sys.modules, "threads": os.environ["OMP_NUM_THREADS"],
    "environment": {k: v for k, v in os.environ.items() if not k.endswith(("_THREADS", "_MAXIMUM_THREADS"))},
}
with open(snakemake.output[0], "w") as out:
    json.dump(view, out)
"""

ENDS = {
    "message": 'print("to stdout")\nraise SystemExit("the one line of the error")',
    "traceback": 'def deep():\n    raise ValueError("from a job")\ndeep()',
    "signal": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "atexit": 'import atexit, sys\natexit.register(lambda: print("atexit ran", file=sys.stderr))\nsys.exit(3)',
}


@pytest.fixture
def workflow(tmp_path, monkeypatch):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "view.py").write_text(VIEW)
    for name, code in ENDS.items():
        (tmp_path / f"{name}.py").write_text(code + "\n")
    monkeypatch.setenv("JOB_SERVER_TEST", "seen")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "on_path"))
    return tmp_path


@pytest.mark.slow
def test_a_forked_job_sees_what_a_python_job_sees(workflow):
    snakemake(workflow, "--cores", "2", "forked/view.json", "real/view.json")
    forked, real = (json.loads((workflow / how / "view.json").read_text()) for how in ("forked", "real"))
    # Which ran where: torch is loaded in the server's forks, not in a new interpreter.
    assert (forked.pop("modules"), real.pop("modules")) == (True, False)
    assert (forked.pop("threads"), real.pop("threads")) == ("1", "2")
    assert forked == real
    assert real.pop("environment")["JOB_SERVER_TEST"] == "seen"
    assert real == {"name": "__main__", "spec": True, "file": str(workflow / "view.py"),
                    "written": True, "argv": 1, "path0": True,
                    "pythonpath": [str(workflow / "on_path")], "cwd": str(workflow),
                    "stdin": ""}


# What the end of each job shows in Snakemake's output, once for each way it ran.
SHOWS = {
    "message": ["to stdout", "the one line of the error"],
    "traceback": ["Traceback (most recent call last):", "    deep()", "ValueError: from a job"],
    "signal": ["<Signals.SIGTERM: 15>"],
    "atexit": ["atexit ran", "exit status 3"],
}


@pytest.mark.slow
def test_a_forked_job_ends_as_a_python_job_ends(workflow):
    targets = [f"{how}/{end}.txt" for end in ENDS for how in ("forked", "real")]
    # One job at a time: unbuffered (as the suite runs Snakemake), the interpreter writes a
    # traceback's last line in three writes, and a job beside it could write between them.
    result = snakemake(workflow, "--cores", "2", "--resources", "alone=1", "--keep-going", *targets, check=False)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert output.count("exit status 1") == 4  # the message's and the traceback's
    counts = {text: output.count(text) for texts in SHOWS.values() for text in texts}
    assert counts == dict.fromkeys(counts, 2), textwrap.shorten(output, 3000)
