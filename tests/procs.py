"""Many short ``paik`` processes for the price of one interpreter start.

A test that checks what real ``paik`` processes print and how they exit (one-line errors, exit
codes, a FIFO that must not hang a process, threads that must not keep it alive at exit) used to
start a fresh interpreter per command: about 5 s of importing torch, diffusers and the renderer
on a 2-core machine before each one did a fraction of a second of work. Here one driver
interpreter imports all that once and forks a child per command. Each child is a real process:
its own stdout and stderr (files), its own exit code, and the interpreter's own exit path —
non-daemon threads are joined and atexit handlers run before it exits, so a thread that would
keep ``paik`` alive hangs the child here too, and the driver kills it at its deadline and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# what the commands import; imported once, before any child is forked (no threads, no GL yet)
PRELOAD = ("torch", "diffusers", "paik.cli", "paik.capture.cli", "paik.capture.generate", "paik.capture.bundle",
           "paik.instrument.cli", "paik.instrument.render.renderer", "paik.video")

DRIVER = r"""
import atexit, importlib, json, os, sys, threading, time, traceback
for name in sys.argv[2:]:
    importlib.import_module(name)
from paik.cli import main
jobs = json.load(open(sys.argv[1]))
done = []
for job in jobs:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            os.environ.update(job["env"])
            for fd, name in ((1, job["out"]), (2, job["err"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            try:
                code = main(job["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            threading._shutdown()  # as the interpreter's exit: waits for every non-daemon thread
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    t0 = time.monotonic()
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - t0 > job["timeout"]:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            code = None
            break
        time.sleep(0.005)
    done.append({"code": code, "seconds": time.monotonic() - t0})
    print(json.dumps(done[-1]), flush=True)
"""


@dataclass
class Proc:
    argv: list[str]
    returncode: int | None  # None: killed at its deadline (a hang)
    stdout: str
    stderr: str
    seconds: float


def run_paik(argvs: list[list[str]], cwd: str | os.PathLike | None = None, env: dict | None = None,
             timeout: float = 120.0) -> list[Proc]:
    """Run ``paik ARGV`` for each argv, one after the other, each in its own forked process, in
    ``cwd`` with ``env`` added to the environment (the driver's too: nothing reads it too early);
    ``timeout`` bounds each one (a child past it is killed and has returncode None)."""
    cwd = str(cwd or ROOT)
    with tempfile.TemporaryDirectory(prefix="paik-procs-") as tmp:
        jobs = [{"argv": [str(a) for a in argv], "cwd": cwd, "env": {"HF_HUB_OFFLINE": "1", **(env or {})},
                 "out": f"{tmp}/{i}.out", "err": f"{tmp}/{i}.err", "timeout": timeout}
                for i, argv in enumerate(argvs)]
        Path(tmp, "jobs.json").write_text(json.dumps(jobs))
        r = subprocess.run([sys.executable, "-c", DRIVER, f"{tmp}/jobs.json", *PRELOAD], cwd=cwd,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, capture_output=True, text=True,
                           timeout=60 + timeout * len(jobs))
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert r.returncode == 0 and len(lines) == len(jobs), f"the driver failed:\n{r.stderr[-3000:]}"
        return [Proc(job["argv"], line["code"], Path(job["out"]).read_text(), Path(job["err"]).read_text(),
                     line["seconds"]) for job, line in zip(jobs, lines)]
