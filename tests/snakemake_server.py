"""Snakemake's command line, each run in a process forked from one that has imported it.

Most of a Snakemake start's CPU time goes to importing modules before it reads a Snakefile
(its persistence layer alone pulls in SQLAlchemy and pydantic), and the suite starts
Snakemake many times. conftest.snakemake asks this server instead: it imports the command
line once, then forks a child per run, which takes the run's folder, environment, output
files, priority and process group, and calls the command line's ``main`` with the run's
arguments, as the ``snakemake`` program does. Every run is still its own process with its
own pid (conftest signals and reprioritises it as it did the program). Its Python jobs go
to the run's job server (tests/job_server.py), which forks them from the modules this server
has also imported.

Protocol, one JSON object per line. Request on stdin: ``{"id", "program", "args", "cwd",
"env", "nice", "session", "out", "err"}``; replies on stdout: ``{"id", "pid"}`` once the child is
forked, ``{"id", "returncode"}`` when it has ended (negative: the signal that ended it).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys

import job_server


def _run(request: dict) -> int:
    """In the forked child: the run's process state, then Snakemake's command line."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C reaches Snakemake as it would
    if request["session"]:
        os.setsid()
    if request["nice"]:
        os.nice(request["nice"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.closerange(3, 256)  # the server's pipes stay the server's
    # What a killed run wrote so far stays readable, as the program's unbuffered output does.
    sys.stdout.reconfigure(line_buffering=True, write_through=True)
    sys.stderr.reconfigure(line_buffering=True, write_through=True)
    sys.argv = [request["program"], *request["args"]]
    job_server.start()
    from snakemake.cli import main

    return job_server.as_the_interpreter(main)


def serve() -> None:
    import snakemake.cli  # noqa: F401 - the imports every run shares, and its jobs
    job_server.preload()

    # Ctrl-C in the terminal reaches the runs (the same process group but for background
    # runs); the server ends when the tests close its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    children: dict[int, int] = {}  # pid -> request id
    requests = sys.stdin.buffer
    replies = sys.stdout

    def reply(**fields) -> None:
        replies.write(json.dumps(fields) + "\n")
        replies.flush()

    pending = b""
    while True:
        ready, _, _ = select.select([requests], [], [], 0.05 if children else None)
        if ready:
            chunk = os.read(requests.fileno(), 65536)
            if not chunk:  # the tests have ended
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    os._exit(_run(request))
                children[pid] = request["id"]
                reply(id=request["id"], pid=pid)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            reply(id=children.pop(pid), returncode=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    serve()
