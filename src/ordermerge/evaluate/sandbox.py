"""Run untrusted generated code (HumanEval completions) in a throw-away, locked-down process.

Boundary (enforced by the OS, not by Python): an unprivileged uid of its own (cannot touch the
evaluator's files or signal its processes), a fresh network namespace with no interface up (no
network, not even loopback), CPU-time, address-space, process-count and file-size limits, a new
session whose every process is killed afterwards, and a temporary working directory deleted after
the run. A pass is reported only by a marker written to a private pipe after `check()` returns,
so `sys.exit(0)` before the tests, or printing "passed", does not count. The checker runs with
a pristine copy of the builtins and without module-level rebindings of builtin names, so
rebinding `abs` or `isinstance` does not fool it.

Residual risk, documented: code in the checker's own process can in principle introspect it
(e.g. via `gc`) and forge the marker; the OS boundary above still holds.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
SANDBOX_UID_BASE = 61000

# The harness runs in the sandboxed interpreter. It reads a one-time token from stdin before any
# untrusted code exists, then executes program and tests in separate namespaces.
HARNESS = r"""
import builtins, os, sys
token = sys.stdin.readline().strip()
fd = int(sys.argv[2])
os.set_inheritable(fd, False)
pristine = dict(builtins.__dict__)
src = open(sys.argv[1], encoding="utf-8").read()
program, tests, entry = src.split("\n#<<SPLIT>>\n")
ns = {"__name__": "__main__", "__builtins__": builtins}
exec(compile(program, "completion.py", "exec"), ns)
candidate = ns[entry]
# The tests may call helpers the prompt defines (e.g. poly, encode_cyclic), but never a
# rebinding of a builtin name: those are dropped so the checker sees the real builtins.
check_ns = {k: v for k, v in ns.items() if not (k in pristine and v is not pristine[k])}
check_ns.update({"__name__": "__check__", "__builtins__": pristine})
exec(compile(tests, "tests.py", "exec"), check_ns)
check_ns["check"](candidate)
os.write(fd, ("PASS " + token).encode())
os.close(fd)
os._exit(0)
"""


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str = ""


_libc = ctypes.CDLL(None, use_errno=True)


def sandbox_python() -> str:
    """An interpreter the sandbox uid can execute: ours if world-readable, else the system one.

    (A pyenv interpreter under /root is unreachable to an unprivileged uid.) Completions need
    only the standard library.
    """
    exe = os.environ.get("ORDERMERGE_SANDBOX_PYTHON")
    if exe:
        return exe
    if os.geteuid() != 0:
        return sys.executable
    path = Path(os.path.realpath(sys.executable))
    if all(p.stat().st_mode & 0o001 for p in path.parents):
        return str(path)
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable
_counter = 0


def _limits(uid: int, cpu_s: int, mem_bytes: int):
    import resource

    def pre() -> None:
        os.setsid()
        if _libc.unshare(CLONE_NEWNET) != 0 and os.geteuid() == 0:
            os._exit(97)  # refuse to run with network rather than run unsafely
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))
        resource.setrlimit(resource.RLIMIT_NPROC, (16, 16))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return pre


def _reap() -> None:
    # As a child subreaper we inherit orphaned fork-bomb children: collect their zombies.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_uid(uid: int) -> None:
    """Kill every process of the sandbox uid (fork-bomb children that left the session)."""
    if os.geteuid() != 0:
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)  # as that uid: reaches only its own processes
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def run_program(program: str, tests: str, entry_point: str, timeout: float = 10.0,
                mem_bytes: int = 2 * 2**30) -> Result:
    """Run `program`, then `check(entry_point)` from `tests`, inside the sandbox."""
    global _counter
    _counter += 1
    _libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us, not to init
    uid = SANDBOX_UID_BASE + (os.getpid() * 1000 + _counter) % 4000
    token = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="ordermerge-sandbox-"))
    rfd, wfd = os.pipe()
    try:
        (work / "harness.py").write_text(HARNESS)
        (work / "job.py").write_text(f"{program}\n#<<SPLIT>>\n{tests}\n#<<SPLIT>>\n{entry_point}")
        if os.geteuid() == 0:
            os.chown(work, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0"}
        errf = tempfile.TemporaryFile()  # outside the sandbox dir; size capped by RLIMIT_FSIZE
        proc = subprocess.Popen(
            [sandbox_python(), "-I", "-S", str(work / "harness.py"), str(work / "job.py"), str(wfd)],
            cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf,
            pass_fds=(wfd,), preexec_fn=_limits(uid, int(timeout) + 1, mem_bytes),
        )
        os.close(wfd)
        wfd = -1
        try:
            try:
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait(timeout=timeout)
            status = "done"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _kill_uid(uid)
            proc.wait()
            _reap()
        os.set_blocking(rfd, False)
        try:
            marker = os.read(rfd, 100)
        except BlockingIOError:
            marker = b""
        errf.seek(0)
        stderr = errf.read()[-2000:].decode(errors="replace")
        errf.close()
        if status == "timeout":
            return Result(False, "timeout", f"> {timeout} s")
        if marker == f"PASS {token}".encode():
            return Result(True, "passed")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        return Result(False, "failed", last)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
        shutil.rmtree(work, ignore_errors=True)
