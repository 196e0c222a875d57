"""The Python jobs of a Snakemake run, each in a process forked from one that has imported
torch and the workflow's other heavy modules.

A ``script:`` job's Python spends most of a tiny job's CPU time importing torch, and the suite
runs hundreds of them. tests/snakemake_server.py imports those modules once (``preload``);
each run it forks then starts a job server (``start``) before Snakemake's command line, and
points Snakemake's Python scripts at tests/job_client.py, which hands its job here. The server
forks the job, which takes the client's folder, environment, standard files and script, and
runs it as ``python SCRIPT`` does (``__main__``, ``sys.argv``, ``sys.path``, exit status).

What still differs from a fresh interpreter: the modules imported before the job, and their
state (Python's hash seed, numpy's unseeded generator: every job shares the server's). A job
whose environment differs from the one those modules were imported in (a thread count or a
library setting they read when loaded) is not forked: its client runs the real interpreter.
The benchmark files of forked jobs measure the client, not the job.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable

# Imported once, in the server; what a job imports besides them it imports itself.
PRELOADED = ("numpy", "PIL.Image", "pyarrow.parquet", "pandas", "torch", "torch._dynamo")
# Environment variables a preloaded module reads when it loads (thread pools, allocators) or
# the interpreter reads when it starts.
_LOAD_TIME = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_", "NUMEXPR_", "TORCH",
              "PYTORCH_", "CUDA", "LD_", "MALLOC_", "PYTHON")
_PER_JOB = {"PYTHONPATH", "PYTHONUNBUFFERED"}  # what a forked job applies itself
# What Snakemake sets for a one-thread job (snakemake.shell): the environment to load in. Should
# Snakemake set another, no job would be forked, and tests/test_job_server.py would fail.
_ONE_THREAD = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_client.py")

_loaded_in: dict[str, str] = {}
_base_path: list[str] = []  # sys.path without the program's folder and PYTHONPATH


def _load_time(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_LOAD_TIME) and k not in _PER_JOB}


def preload() -> None:
    """In tests/snakemake_server.py, once: the modules every job shares."""
    pythonpath = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
    _base_path[:] = [p for p in sys.path[1:] if p not in pythonpath]
    os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
    _loaded_in.update(_load_time(os.environ))
    for name in PRELOADED:
        importlib.import_module(name)


def as_the_interpreter(main: Callable[[], object]) -> int:
    """Call ``main`` as the interpreter runs a program, and return the exit status it would:
    an uncaught exception's traceback (then 1), a ``SystemExit``'s message (then 1) or code;
    then non-daemon threads joined, ``atexit`` handlers, standard files flushed. After a
    ``KeyboardInterrupt`` the process kills itself with SIGINT, as the interpreter does."""
    interrupted = False
    try:
        main()
        code = 0
    except SystemExit as done:
        code = 0 if done.code is None else done.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        interrupted, code = isinstance(error, KeyboardInterrupt), 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def start() -> None:
    """In a run's process, before Snakemake's command line: fork the run's job server (in the
    run's process group, so that what signals the group reaches its jobs) and send the run's
    Python scripts to it."""
    # An abstract socket (Linux): no file to remove, no limit on the temporary folder's length.
    address = f"balanced-experts-jobs-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(64)
    run_ended, run_alive = os.pipe()  # EOF when the run's process has ended
    if os.fork() == 0:
        os.close(run_alive)
        try:
            _serve(listener, run_ended)
        except BaseException:  # into the run's error output; its jobs' clients then end with status 1
            sys.excepthook(*sys.exc_info())
        finally:
            os._exit(0)
    os.close(run_ended)
    listener.close()

    from snakemake import script

    plain = script.PythonScript.execute_script

    def execute_script(self, fname, edit=False):
        if self.container_img is not None or self.conda_env is not None or self.env_modules is not None:
            return plain(self, fname, edit)
        self._execute_cmd("{python} -I -S {client:q} {server:q} {fname:q}", python=sys.executable, client=_CLIENT,
                          server=address, fname=fname, is_python_script=True)

    script.PythonScript.execute_script = execute_script


def _serve(listener: socket.socket, run_ended: int) -> None:
    # Ctrl-C and SIGTERM are for the jobs (the same process group); this reports how they end.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    jobs: dict[int, socket.socket | None] = {}  # pid -> its client, None once the client is gone
    while run_ended is not None or jobs:
        watched = [listener, *filter(None, jobs.values()), *([run_ended] if run_ended is not None else [])]
        ready, _, _ = select.select(watched, [], [], 0.05 if jobs else None)
        for item in ready:
            if item is listener:
                _fork_job(listener, run_ended, jobs)
            elif item is run_ended:
                os.close(run_ended)
                run_ended = None
            else:  # a client's end of file: it was killed, and so is its job
                pid = next(pid for pid, client in jobs.items() if client is item)
                os.kill(pid, signal.SIGKILL)
                item.close()
                jobs[pid] = None
        while jobs:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            client = jobs.pop(pid)
            if client is not None:
                with contextlib.suppress(OSError):  # the client is gone
                    client.sendall(json.dumps({"status": status}).encode() + b"\n")
                client.close()


def _fork_job(listener: socket.socket, run_ended: int | None, jobs: dict) -> None:
    client, _ = listener.accept()
    try:
        request, files = _receive(client)
    except (OSError, ValueError):  # a client that ended before it had asked
        client.close()
        return
    if _load_time(request["env"]) != _loaded_in:
        client.sendall(b'{"exec": true}\n')
        client.close()
    else:
        pid = os.fork()
        if pid == 0:
            for other in (listener, client, *filter(None, jobs.values())):
                other.close()
            if run_ended is not None:
                os.close(run_ended)
            os._exit(as_the_interpreter(lambda: _job(request, files)))
        client.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        jobs[pid] = client
    for fd in files:
        os.close(fd)


def _receive(client: socket.socket) -> tuple[dict, list[int]]:
    header, files, _, _ = socket.recv_fds(client, 8, 3)
    length, data = int.from_bytes(header, "big"), b""
    while len(data) < length:
        chunk = client.recv(length - len(data))
        if not chunk:
            raise OSError("the client ended")
        data += chunk
    return json.loads(data), files


def _job(request: dict, files: list[int]) -> None:
    """In the forked job: the client's process state, then its script as ``__main__``."""
    for target, fd in enumerate(files):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as the interpreter starts
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=unbuffered)
    sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
    script = request["script"]
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(os.path.abspath(script)), *pythonpath, *_base_path]
    sys.argv = [script]
    importlib.invalidate_caches()
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__ = script, builtins
    sys.modules["__main__"] = main
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec")
    exec(code, main.__dict__)
