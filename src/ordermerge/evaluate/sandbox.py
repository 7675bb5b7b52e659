"""Run untrusted generated code (HumanEval completions) in an OS sandbox, and score it outside.

Standard library only: this one file plays three roles.

    evaluator ── run_program() ──► launcher  (`python -I -S sandbox.py`: a fresh, single-threaded
                                    │         interpreter, so forking is safe even when the
                                    │         evaluator runs torch threads)
                                    ├─ runs the TESTS (trusted: the benchmark's own code) with
                                    │  `candidate` a stub that sends the arguments into the
                                    │  sandbox and decodes the reply as plain data
                                    └─ setup child: its own session; unshare(user, mount, PID,
                                       net, IPC, UTS); the launcher writes its uid/gid maps; it
                                       builds a tmpfs root (system and interpreter folders bound
                                       read-only, a private /tmp, /dev/null…), pivot_root, forks
                                       └─ server: PID 1 of the new PID namespace, leader of its
                                          own session and process group, an unprivileged uid
                                          without capabilities, no_new_privs, rlimits; runs
                                          `python -I -S sandbox.py --serve`: loads the PROGRAM and
                                          answers calls.

Guarantees, the same for root and an ordinary user (unprivileged user namespaces):
- no network (a new network namespace: not even loopback), no host sockets, no host files but
  the read-only system and interpreter folders; /tmp, /dev/shm and home are private tmpfs or
  absent, and vanish with the run; System V IPC is private;
- no process outside the run is visible (PID namespace) or can be signalled: pids are looked
  up in the run's namespace, and kill(0, …), which signals the caller's process group across
  namespaces, reaches only the run's processes (the server leads a session of its own); when the
  run ends, PID 1 exits and the kernel kills every process of the run before `run_program`
  returns;
- memory: at most `max_procs` processes (RLIMIT_NPROC, counted inside the run's own user
  namespace), each with an address space of mem_bytes / max_procs, so the whole tree stays
  under mem_bytes; CPU time, file size and open files are capped;
- the score is decided in the launcher, which the sandbox cannot see or signal: the candidate's
  return values cross a pipe as plain data (None, bool, int, float, str, bytes, list, tuple,
  dict, set) decoded into builtin types, so an object with a rigged `__eq__`, a forged marker
  or a rebinding of builtins decides nothing.

Where isolation cannot be set up (user namespaces disabled, say), `run_program` raises
`SandboxUnavailable` naming what failed; `isolate=False` runs the same protocol without
namespaces (the caller must have asked for that explicitly).
"""

from __future__ import annotations

import json
import os
import sys

MAX_REPLY = 16 * 2**20  # bytes of one encoded return value
SANDBOX_UID = 1000  # the uid inside the run's user namespace
NOBODY = 65534  # the host uid a root evaluator's sandbox runs as


# --------------------------------------------------------------------------- plain-data codec
def encode(value: object) -> object:
    """A JSON-able form of plain data; exact types only (no subclasses), floats exact (hex)."""
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return {"f": value.hex()}
    if t is list:
        return [encode(x) for x in value]
    if t is tuple:
        return {"t": [encode(x) for x in value]}
    if t is dict:
        return {"d": [[encode(k), encode(v)] for k, v in value.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(x) for x in value]}
    if t is bytes:
        return {"b": value.hex()}
    raise TypeError(f"not plain data: {t.__name__}")


def decode(obj: object) -> object:
    """The inverse of encode, producing builtin types only; anything else is refused."""
    if obj is None or type(obj) in (bool, int, str):
        return obj
    if type(obj) is float:  # a JSON number with a fraction (encode never writes one)
        return obj
    if type(obj) is list:
        return [decode(x) for x in obj]
    if type(obj) is dict and len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "f" and type(v) is str:
            return float.fromhex(v)
        if tag == "b" and type(v) is str:
            return bytes.fromhex(v)
        if type(v) is list:
            if tag == "t":
                return tuple(decode(x) for x in v)
            if tag == "s":
                return {decode(x) for x in v}
            if tag == "fs":
                return frozenset(decode(x) for x in v)
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in v):
                return {decode(k): decode(x) for k, x in v}
    raise ValueError("malformed reply")


# ------------------------------------------------------------------------------ the evaluator
class Result:
    """passed, status (passed | failed | timeout) and a one-line detail. A plain class: the
    launcher and the server import this file, and dataclasses would double their start-up."""

    __slots__ = ("detail", "passed", "status")

    def __init__(self, passed: bool, status: str, detail: str = ""):
        self.passed, self.status, self.detail = passed, status, detail

    def __repr__(self) -> str:
        return f"Result(passed={self.passed}, status={self.status!r}, detail={self.detail!r})"


class SandboxUnavailable(RuntimeError):
    """Isolation could not be established; the message names what failed."""


class _Launcher:
    """One launcher process per evaluator process, reused across runs (its start-up is a third
    of a run's cost); restarted if it dies or overruns. Runs go one at a time."""

    def __init__(self) -> None:
        import threading

        self.proc = None
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def _start(self):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.realpath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.pid = os.getpid()

    def stop(self) -> None:
        if self.proc is not None and self.pid == os.getpid():
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def run(self, job: dict) -> dict:
        import select

        with self.lock:
            if self.proc is None or self.pid != os.getpid() or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write((json.dumps(job) + "\n").encode())
                self.proc.stdin.flush()
                ready, _, _ = select.select([self.proc.stdout], [], [], job["timeout"] + 30)
                line = self.proc.stdout.readline() if ready else b""
            except BrokenPipeError:
                line = b""
            if not line:
                self.stop()
                return {"status": "timeout" if not ready else "failed",
                        "detail": "the sandbox launcher did not answer"}
            return json.loads(line)


_LAUNCHER = _Launcher()


def run_program(program: str, tests: str, entry_point: str, timeout: float = 10.0,
                mem_bytes: int = 2 * 2**30, prelude: str = "", max_procs: int = 8,
                isolate: bool = True) -> Result:
    """Load `program` in the sandbox and run `check(candidate)` from `tests` against it.

    `prelude` (trusted, e.g. the HumanEval prompt) runs beside the tests, outside the sandbox,
    for the helpers they call. `timeout` bounds the whole run (wall clock); `mem_bytes` the
    memory of all its processes together."""
    res = _LAUNCHER.run({"program": program, "tests": tests, "entry": entry_point,
                         "prelude": prelude, "timeout": float(timeout), "mem": int(mem_bytes),
                         "procs": int(max_procs), "isolate": bool(isolate)})
    if res["status"] == "unavailable":
        raise SandboxUnavailable(res["detail"])
    return Result(res["status"] == "passed", res["status"], res["detail"])


_PROBLEM: list[str | None] = []


def isolation_problem() -> str | None:
    """None when this machine can isolate a run; else one line naming what is missing."""
    if not _PROBLEM:
        try:
            ok = run_program("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
            _PROBLEM.append(None if ok.passed else f"a trivial sandboxed run failed: {ok.detail}")
        except SandboxUnavailable as e:
            _PROBLEM.append(str(e))
    return _PROBLEM[0]


# ------------------------------------------------------------------------------- the launcher
class _Timeout(Exception):
    pass


class CandidateError(Exception):
    """The candidate raised, died, or answered something that is not plain data."""


class _Channel:
    """Line-delimited JSON to and from the server, every wait bounded by the run's deadline."""

    def __init__(self, wfd: int, rfd: int, errfd: int, deadline: float):
        self.wfd, self.rfd, self.errfd, self.deadline = wfd, rfd, errfd, deadline
        self.buf = b""
        self.err = b""
        for fd in (wfd, rfd, errfd):
            os.set_blocking(fd, False)

    def _wait(self, write: bool) -> None:
        import select
        import time

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Timeout
        r, w, _ = select.select([self.rfd, self.errfd] if not write else [self.errfd],
                                [self.wfd] if write else [], [], left)
        if self.errfd in r:
            self.drain_err()
        if not r and not w:
            raise _Timeout

    def drain_err(self) -> None:
        try:
            self.err = (self.err + os.read(self.errfd, 65536))[-4000:]
        except (BlockingIOError, OSError):
            pass

    def send(self, obj: object) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            self._wait(write=True)
            try:
                data = data[os.write(self.wfd, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise CandidateError("the sandboxed process exited " + self.last_err()) from None

    def recv(self) -> dict:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_REPLY:
                raise CandidateError(f"reply larger than {MAX_REPLY} bytes")
            self._wait(write=False)
            try:
                chunk = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise CandidateError("the sandboxed process exited " + self.last_err())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            raise CandidateError("malformed reply") from None
        if type(msg) is not dict or len(msg) != 1:
            raise CandidateError("malformed reply")
        return msg

    def last_err(self) -> str:
        self.drain_err()
        lines = self.err.decode(errors="replace").strip().splitlines()
        return f"({lines[-1]})" if lines else ""


def _check(job: dict, ch: _Channel) -> tuple[str, str]:
    """Run the trusted tests against the candidate behind `ch`; (status, detail)."""
    try:
        ch.send({"program": job["program"], "entry": job["entry"]})
        loaded = ch.recv()
    except _Timeout:
        return "timeout", f"> {job['timeout']} s"
    except CandidateError as e:
        return "failed", f"loading the program: {e}"
    if "raise" in loaded:
        return "failed", f"loading the program: {loaded['raise']}"

    def candidate(*args, **kwargs):
        try:
            ch.send({"a": encode(list(args)), "k": encode(kwargs)})
        except TypeError as e:
            raise CandidateError(f"the tests passed an argument that is {e}") from None
        msg = ch.recv()
        if "raise" in msg:
            raise CandidateError(f"candidate raised {msg['raise']}"[:500])
        try:
            return decode(msg["ok"])
        except (KeyError, ValueError, TypeError, RecursionError):
            raise CandidateError("the candidate returned something that is not plain data") from None

    ns: dict = {"__name__": "__check__"}
    try:
        exec(compile(job["prelude"], "prompt.py", "exec"), ns)
        ns[job["entry"]] = candidate  # some tests call the function by name (HumanEval/33)
        exec(compile(job["tests"], "tests.py", "exec"), ns)
        ns["check"](candidate)
    except _Timeout:
        return "timeout", f"> {job['timeout']} s"
    except CandidateError as e:
        return "failed", str(e)
    except Exception as e:  # an assertion of the tests, or an error the reply caused in them
        return "failed", f"{type(e).__name__}: {e}"[:500]
    return "passed", ""


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    return libc


def _ok(rc: int, what: str, hint: str = "") -> None:
    import ctypes

    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}{hint}")


CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
               "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")


def _bind_sources(exe: str) -> list[str]:
    """The host paths the sandbox sees (read-only): system folders, the interpreter's prefix
    and this file; nothing else of the host."""
    prefix = os.path.realpath(sys.base_prefix)
    paths = [p for p in SYSTEM_DIRS if os.path.lexists(p)]
    for p in (prefix, os.path.dirname(exe)):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    return paths


def _bind(libc, src: str, dst: str) -> None:
    flags = os.statvfs(src).f_flag  # flags the kernel locks on a bind made in a user namespace
    keep = ((MS_NOEXEC if flags & os.ST_NOEXEC else 0) | (MS_NODEV if flags & os.ST_NODEV else 0))
    if os.path.isdir(src):
        os.makedirs(dst, 0o755, exist_ok=True)
        keep |= MS_NODEV
    else:
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        open(dst, "a").close()
    _ok(libc.mount(src.encode(), dst.encode(), None, MS_BIND, None), f"bind {src}")
    _ok(libc.mount(None, dst.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep,
                   None), f"read-only {src}")


def _build_root(libc, mp: str, me: str, exe: str) -> None:
    """A tmpfs root holding read-only binds of the sources, then pivot_root into it."""
    _ok(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _ok(libc.mount(b"tmpfs", mp.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"),
        "tmpfs root")
    for src in _bind_sources(exe):
        dst = mp + src
        if os.path.islink(src):
            os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
            os.symlink(os.readlink(src), dst)
        else:
            _bind(libc, src, dst)
    for dev in DEVICES:
        if os.path.exists(dev):
            _bind(libc, dev, mp + dev)
    _bind(libc, me, mp + "/.sandbox/sandbox.py")
    os.makedirs(mp + "/tmp")
    _ok(libc.mount(b"tmpfs", (mp + "/tmp").encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                   b"size=16m,mode=1777"), "tmpfs /tmp")
    os.chdir(mp)
    os.mkdir(".old")
    _ok(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b".old"), "pivot_root")
    os.chdir("/")
    _ok(libc.umount2(b"/.old", 2), "detach the host root")  # MNT_DETACH
    os.rmdir("/.old")
    _ok(libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
        "read-only root")


def _serve_exec(job: dict, fds: tuple[int, int, int], root: bool) -> None:
    """In the server process: drop privileges, limit, and exec the server (never returns)."""
    import fcntl
    import resource

    libc = _libc()
    isolate = job["isolate"]
    # kill(0, …) signals the caller's whole process group across PID namespaces, and an ordinary
    # user's sandbox uid maps to the user's own, so the kernel allows it: the group must hold
    # sandboxed processes only (the non-isolated path's killpg relies on it too)
    os.setsid()
    if isolate:
        if root:
            os.setgroups([])
        os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)  # no capability survives this
    null = os.open("/dev/null", os.O_RDWR)
    to_s, from_s, err = fds
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (null, null, err, to_s, from_s)]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(5, 1 << 16)
    _ok(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    cpu = int(job["timeout"]) + 1
    limits = {resource.RLIMIT_CPU: cpu, resource.RLIMIT_AS: job["mem"] // job["procs"],
              resource.RLIMIT_FSIZE: 8 * 2**20, resource.RLIMIT_CORE: 0,
              resource.RLIMIT_NOFILE: 64}
    if isolate:  # counted per user namespace: only this run's processes
        limits[resource.RLIMIT_NPROC] = job["procs"]
    for lim, v in limits.items():
        resource.setrlimit(lim, (v, v))
    me = "/.sandbox/sandbox.py" if isolate else os.path.realpath(__file__)
    exe = job["exe"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    os.chdir("/tmp" if isolate else "/")
    os.execve(exe, [exe, "-I", "-S", me, "--serve"], env)


def _setup_child(job: dict, mp: str, pipes: dict[str, int], root: bool, launcher: int) -> None:
    """The forked setup process: namespaces, root, then the server as its child. Reports
    'ns', then 'ready' (or 'error: …') on the status pipe; never returns."""
    import signal

    status = pipes["status_w"]
    for n in ("to_s_w", "from_s_r", "err_r", "status_r", "go_w"):  # the launcher's ends
        os.close(pipes[n])
    try:
        # a session of the run's own, apart from the evaluator's process group and terminal:
        # group signals cross neither way; it still dies with the launcher (PDEATHSIG, checked
        # below), and the server in turn with it
        os.setsid()
        libc = _libc()
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != launcher:  # the launcher died before PDEATHSIG was armed
            os._exit(1)
        if job["isolate"]:
            flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
            _ok(libc.unshare(flags), "unshare(user, mount, pid, net, ipc, uts namespaces)",
                " (user namespaces disabled? see /proc/sys/user/max_user_namespaces, "
                "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)")
            os.write(status, b"ns\n")
            if os.read(pipes["go_r"], 16) != b"go":
                os._exit(1)
            _build_root(libc, mp, os.path.realpath(__file__), job["exe"])
        pid = os.fork()
        if pid == 0:
            try:
                _serve_exec(job, (pipes["to_s_r"], pipes["from_s_w"], pipes["err_w"]), root)
            except BaseException as e:  # stderr is the error pipe by now
                os.write(2, f"sandbox setup: {e}\n".encode())
            os._exit(127)
        os.write(status, b"ready\n")
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, 9))
        os.waitpid(pid, 0)  # PID 1 of the namespace: reaped only once every process of it is gone
        if not job["isolate"]:
            try:
                os.killpg(pid, 9)
            except OSError:
                pass
        os._exit(0)
    except BaseException as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        try:
            os.write(status, f"error: {why}\n".encode())
        finally:  # never back into the launcher's code, even with the launcher gone (EPIPE)
            os._exit(1)


def _write_maps(pid: int, root: bool) -> None:
    uid, gid = os.getuid(), os.getgid()
    if root:  # inner root (setup only) is host root; the sandbox uid is nobody
        maps = {"uid_map": f"0 0 1\n{SANDBOX_UID} {NOBODY} 1\n",
                "gid_map": f"0 0 1\n{SANDBOX_UID} {NOBODY} 1\n"}
    else:  # an ordinary user may map its own uid only
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        maps = {"uid_map": f"{SANDBOX_UID} {uid} 1\n", "gid_map": f"{SANDBOX_UID} {gid} 1\n"}
    for name, text in maps.items():
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def _mountpoint() -> str:
    """A fresh empty folder (mode 700, a random name: nothing can be planted there) where the
    setup process mounts the run's root (without tempfile, whose imports slow every run)."""
    base = os.environ.get("TMPDIR", "/tmp")
    while True:
        path = os.path.join(base, f"ordermerge-sandbox-{os.urandom(8).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def _launch(job: dict) -> dict:
    import signal
    import time

    deadline = time.monotonic() + job["timeout"]
    root = os.geteuid() == 0
    job["exe"] = os.path.realpath(sys.executable)
    names = ("to_s", "from_s", "err", "status", "go")
    pipes = {}
    for n in names:
        pipes[f"{n}_r"], pipes[f"{n}_w"] = os.pipe()
    mp = _mountpoint() if job["isolate"] else ""
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:
        _setup_child(job, mp, pipes, root, launcher)
    for n in ("to_s_r", "from_s_w", "err_w", "status_w", "go_r"):
        os.close(pipes[n])
    status = os.fdopen(pipes["status_r"], "rb")
    try:
        line = status.readline().decode().strip()
        if line == "ns":
            try:
                _write_maps(pid, root)
            except OSError as e:
                line = f"error: writing the user namespace's id maps: {e.strerror}"
            else:
                os.write(pipes["go_w"], b"go")
                line = status.readline().decode().strip()
        if line != "ready":
            return {"status": "unavailable",
                    "detail": line.removeprefix("error: ") or "the setup process died"}
        ch = _Channel(pipes["to_s_w"], pipes["from_s_r"], pipes["err_r"], deadline)
        state, detail = _check(job, ch)
        return {"status": state, "detail": detail}
    finally:
        os.close(pipes["to_s_w"])  # the server's input ends: it exits, and so does the run
        os.close(pipes["go_w"])
        end = time.monotonic() + 1.0
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > end:
                os.kill(pid, signal.SIGTERM)  # the setup process kills PID 1, then exits
                os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        if mp:
            os.rmdir(mp)  # the tmpfs lived in the run's mount namespace: this folder is empty


def _serve() -> None:
    """In the sandbox: load the program, then answer one call per request line."""
    rd = os.fdopen(3, "rb")
    wr = os.fdopen(4, "wb", buffering=0)

    def reply(obj: dict) -> None:
        wr.write((json.dumps(obj) + "\n").encode())

    job = json.loads(rd.readline())
    ns = {"__name__": "__main__"}
    try:
        exec(compile(job["program"], "completion.py", "exec"), ns)
        fn = ns[job["entry"]]
    except BaseException as e:
        reply({"raise": f"{type(e).__name__}: {e}"[:500]})
        os._exit(1)
    reply({"loaded": True})
    for line in rd:
        req = json.loads(line)
        try:
            out = {"ok": encode(fn(*decode(req["a"]), **decode(req["k"])))}
        except BaseException as e:
            out = {"raise": f"{type(e).__name__}: {e}"[:500]}
        reply(out)
    os._exit(0)


def _main() -> None:
    if sys.argv[1:] == ["--serve"]:
        _serve()
        return
    out = os.fdopen(os.dup(1), "w")  # results go here; the tests' own prints go nowhere
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for line in sys.stdin.buffer:  # one job a line, until the evaluator closes the pipe
        try:
            res = _launch(json.loads(line))
        except Exception as e:
            res = {"status": "failed", "detail": f"sandbox launcher: {type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    _main()
