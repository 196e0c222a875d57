"""A Snakemake job's ``python SCRIPT``, run by tests/job_server.py in a process it forks.

Snakemake runs this (``python -I -S job_client.py ADDRESS SCRIPT``, ADDRESS the server's
abstract socket; no site, so it starts in milliseconds) where it would run the script. It
hands the server the script, its folder, its environment and its standard files, then ends
as the job ended: with its status, or killed by its signal. The job is in this process's
process group, so what signals the run's group (Ctrl-C, a background run's SIGKILL) reaches
it directly; a SIGTERM to this process is passed on; if this process is killed, the server
kills the job.
"""

import json
import os
import signal
import socket
import sys


def main() -> None:
    address, script = sys.argv[1:]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect("\0" + address)
    request = json.dumps({"script": script, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(server, [len(request).to_bytes(8, "big")], [0, 1, 2])
    server.sendall(request)
    replies = server.makefile("r")
    reply = json.loads(replies.readline())
    if "exec" in reply:  # an environment the server's modules were not imported in: the real thing
        os.execv(sys.executable, [sys.executable, script])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it reaches the job itself; its status says the rest
    signal.signal(signal.SIGTERM, lambda *_: os.kill(reply["pid"], signal.SIGTERM))
    line = replies.readline()
    if not line:
        sys.exit(f"tests/job_server.py ended before job {reply['pid']} ({script})")
    code = os.waitstatus_to_exitcode(json.loads(line)["status"])
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
