"""Runs command-line scripts for the bad-input rows without paying Python's and torch's
start-up for each: this process imports ``torch`` and ``sgm`` once, then forks one child
per request, which runs the script as ``python SCRIPT ARGV...`` would (``__main__``,
``sys.argv``, ``sys.path[0]``, working folder, environment, stdout / stderr to files,
exit status, the ``atexit`` handlers run at exit).

Protocol, one JSON object per line: in ``{"script", "argv", "cwd", "env", "timeout"}``,
out ``{"returncode", "stdout", "stderr"}``. Started by ``cli_contract_support`` with
``OMP_NUM_THREADS=1`` (no thread pool exists before the fork); Linux only.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback


def _child(request: dict, out_path: str, err_path: str) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdin = open(os.devnull)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    script = request["script"]
    sys.argv = [script, *request["argv"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        code = done.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (what the interpreter would print)
        traceback.print_exc()
        return 1
    return 0


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -int(signal.SIGKILL)
        time.sleep(0.005)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def serve() -> None:
    import torch  # noqa: F401  (the imports every child shares)

    import sgm  # noqa: F401

    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        # a plain folder: a TemporaryDirectory's finalizer would run in the child's exit
        folder = tempfile.mkdtemp(prefix="cli-row-")
        out_path, err_path = os.path.join(folder, "out"), os.path.join(folder, "err")
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child ends here, as the interpreter would end it
            code = _child(request, out_path, err_path)
            atexit._run_exitfuncs()
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code & 0xFF)
        code = _wait(pid, float(request.get("timeout", 120)))
        answer = {"returncode": code, "stdout": _read(out_path), "stderr": _read(err_path)}
        shutil.rmtree(folder, ignore_errors=True)
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    serve()
