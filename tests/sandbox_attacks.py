"""Attacks on the code sandbox, run as whoever starts this script (root, or an ordinary user).

Standard library only, so an ordinary user can run it with the system Python and a copy of
sandbox.py:  python3 sandbox_attacks.py --sandbox DIR   prints one JSON object
{attack: {"held": bool, "detail": str}} and exits 1 if any attack got through.

Each attack is a program whose `f` tries one thing and the tests assert that it worked, so a
run that *passes* is a breach; host-side checks (canaries, listeners, leftovers) come after.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = f"ordermerge-attack-{os.getpid()}-{os.urandom(4).hex()}"
SHM_KEY = 0x0DE1_0000 + os.getpid() % 0xFFFF


def _attacks(ctx: dict) -> dict[str, tuple[str, str]]:
    """name -> (program, tests); ctx holds the host-side paths and ports to aim at."""
    want = "def check(c):\n    r = c()\n    assert r == {!r}, r\n"
    host = "def check(c):\n    c()\n    assert False, 'host checks decide'\n"

    def attempt(*lines: str, imports: str = "") -> str:
        """f() runs `lines` and returns what they return, or the OSError that stopped them."""
        body = "".join(f"        {ln}\n" for ln in lines)
        return f"{imports}def f():\n    try:\n{body}    except OSError as e:\n        return str(e)\n"

    a = {
        "connect_loopback_listener": (
            attempt(f"socket.create_connection(('127.0.0.1', {ctx['port']}), timeout=1)",
                    "return 'connected'", imports="import socket\n"),
            want.format("connected")),
        "connect_host_unix_socket": (
            attempt("s = socket.socket(socket.AF_UNIX)", f"s.connect({ctx['unix']!r})",
                    "return 'connected'", imports="import socket\n"),
            want.format("connected")),
        "read_evaluator_0600_file": (
            attempt(f"return open({ctx['secret']!r}).read()"), want.format("s3cret")),
        "read_and_overwrite_home_canary": (
            attempt(f"t = open({ctx['canary']!r}).read()",
                    f"open({ctx['canary']!r}, 'w').write('pwned')", "return t"),
            want.format("canary")),
        "overwrite_world_writable_file": (
            attempt(f"open({ctx['shared']!r}, 'w').write('pwned')", "return 'written'"),
            want.format("written")),
        "plant_tmp_devshm_symlink": (
            "import os\ndef f():\n    done = []\n"
            f"    for p in ('/tmp/{MARK}', '/dev/shm/{MARK}', '/var/tmp/{MARK}'):\n"
            "        try:\n            open(p, 'w').write('x'); done.append(p)\n"
            "        except OSError:\n            pass\n"
            f"    try:\n        os.symlink('/etc/passwd', '/tmp/{MARK}.link'); done.append('link')\n"
            "    except OSError:\n        pass\n    return len(done)\n",
            host),
        "sysv_shared_memory": (
            "import ctypes\ndef f():\n    libc = ctypes.CDLL(None)\n"
            f"    return libc.shmget({SHM_KEY}, 4096, 0o1666)\n",
            host),
        "see_host_processes": (
            "import os\ndef f():\n    try:\n        return len(os.listdir('/proc'))\n"
            "    except OSError:\n        return 0\n",
            "def check(c):\n    assert c() > 1\n"),
        "kill_evaluator_and_launcher": (
            "import os, signal\ndef f():\n    hit = 0\n"
            f"    for pid in ({ctx['evaluator']}, {ctx['launcher']}, -1):\n        try:\n"
            "            os.kill(pid, signal.SIGKILL); hit += 1\n        except OSError:\n"
            "            pass\n    return hit\n",
            host),
        **{name: (
            "import os, signal\ndef f():\n    hit = []\n"
            "    for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):\n        try:\n"
            f"            os.kill({target}, sig); hit.append(sig.name)\n"
            "        except OSError:\n            pass\n    return hit\n",
            host) for name, target in (("signal_own_process_group", 0),
                                        ("signal_every_process", -1),
                                        ("signal_evaluator_process_group", -ctx["pgid"]))},
        "daemon_outlives_run": (
            "import os, sys\ndef f():\n    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n"
            f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {MARK!r}])\n"
            "        os._exit(0)\n    os.wait()\n    return 'spawned'\n",
            host),
        "forged_pass_output": (
            "import os, sys\nprint('PASS'); print('passed')\n"
            "for fd in range(0, 40):\n    try:\n        os.write(fd, b'PASS passed\\n')\n"
            "    except OSError:\n        pass\n"
            "import __main__\n__main__.passed = True\ndef f(x):\n    return x\n",
            "def check(c):\n    assert c(2) == 4\n"),
        "always_equal_object": (
            "class A:\n    def __eq__(self, o):\n        return True\n    __ne__ = lambda s, o: False\n"
            "def f(x):\n    return A()\n",
            "def check(c):\n    assert c(2) == 4\n"),
        "int_subclass_equal_to_all": (
            "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
            "def f(x):\n    return I(0)\n",
            "def check(c):\n    assert c(2) == 4\n"),
        "rebind_builtins": (
            "import builtins\nbuiltins.AssertionError = SystemExit\nbuiltins.exec = lambda *a, **k: None\n"
            "builtins.abs = lambda v: 0\ndef f(x):\n    return x\n",
            "def check(c):\n    assert abs(c(2) - 4) == 2\n    assert c(2) == 4\n"),
        "sys_exit_before_tests": (
            "import sys\nsys.exit(0)\ndef f(x):\n    return 2 * x\n",
            "def check(c):\n    assert c(2) == 4\n"),
        "bounded_fork_storm": (
            "import os, time\ndef f():\n    n = 1\n    for _ in range(200):\n        try:\n"
            "            if os.fork() == 0:\n                time.sleep(30); os._exit(0)\n"
            "            n += 1\n        except OSError:\n            break\n    return n\n",
            f"def check(c):\n    assert c() > {ctx['procs']}\n"),
        "multi_process_memory_grab": (
            "import os\n"
            "def grab():\n    held, mb = [], 0\n    try:\n        while mb < 4096:\n"
            "            held.append(bytearray(32 * 2**20)); mb += 32\n    except MemoryError:\n"
            "        pass\n    return mb\n"
            "def f():\n    r, w = os.pipe()\n    kids = 0\n    for _ in range(15):\n        try:\n"
            "            pid = os.fork()\n        except OSError:\n            break\n"
            "        if pid == 0:\n            os.write(w, b'%d\\n' % grab()); import time; time.sleep(5); os._exit(0)\n"
            "        kids += 1\n    total = grab()\n    os.close(w)\n    got = b''\n"
            "    for _ in range(kids):\n        chunk = os.read(r, 4096)\n        if not chunk:\n            break\n        got += chunk\n"
            "    return total + sum(int(x) for x in got.split())\n",
            f"def check(c):\n    mb = c()\n    assert mb > {ctx['mem_mb']}, mb\n"),
        "infinite_loop": ("def f():\n    while True:\n        pass\n", want.format(1)),
    }
    return a


def _host_checks(ctx: dict) -> dict[str, str]:
    """Breaches seen from the host after every attack ran: name -> what was found."""
    found = {}
    for name, listener in (("connect_loopback_listener", ctx["listener"]),
                           ("connect_host_unix_socket", ctx["unix_listener"])):
        try:
            listener.accept()[0].close()
            found[name] = "the listener accepted a connection"
        except BlockingIOError:
            pass
    if Path(ctx["canary"]).read_text() != "canary":
        found["read_and_overwrite_home_canary"] = "the home canary changed"
    if Path(ctx["shared"]).read_text() != "safe":
        found["overwrite_world_writable_file"] = "the world-writable file changed"
    left = [p for p in (f"/tmp/{MARK}", f"/dev/shm/{MARK}", f"/var/tmp/{MARK}", f"/tmp/{MARK}.link")
            if os.path.lexists(p)]
    if left:
        found["plant_tmp_devshm_symlink"] = f"left on the host: {left}"
    try:
        keys = [int(ln.split()[0]) for ln in open("/proc/sysvipc/shm").read().splitlines()[1:]]
        if SHM_KEY in keys:
            found["sysv_shared_memory"] = "a shared memory segment outlived the run"
    except OSError:
        pass
    for pid in os.listdir("/proc"):
        try:
            if MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found["daemon_outlives_run"] = f"process {pid} outlived the run"
        except OSError:
            pass
    return found


def run_all(sandbox, procs: int = 8, mem_mb: int = 2048, timeout: float = 5.0) -> dict[str, dict]:
    work = Path(tempfile.mkdtemp(prefix="ordermerge-attacks-"))
    home = Path(os.path.expanduser("~"))
    canary = home / f".{MARK}-canary"
    try:
        (work / "secret").write_text("s3cret")
        os.chmod(work / "secret", 0o600)
        shared = work / "shared"
        shared.write_text("safe")
        os.chmod(shared, 0o666)
        canary.write_text("canary")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(str(work / "sock"))
        os.chmod(work / "sock", 0o777)
        unix.listen(8)
        unix.setblocking(False)
        sandbox.run_program("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
        launcher = sandbox._LAUNCHER.proc
        ctx = {"port": listener.getsockname()[1], "unix": str(work / "sock"),
               "secret": str(work / "secret"), "canary": str(canary), "shared": str(shared),
               "evaluator": os.getpid(), "pgid": os.getpgid(0), "launcher": launcher.pid,
               "procs": procs, "mem_mb": mem_mb, "listener": listener, "unix_listener": unix}
        out = {}
        for name, (program, tests) in _attacks(ctx).items():
            t0 = time.monotonic()
            r = sandbox.run_program(program, tests, "f", timeout=timeout,
                                    mem_bytes=mem_mb * 2**20, max_procs=procs)
            wall = time.monotonic() - t0
            held = not r.passed and wall < timeout + 5
            out[name] = {"held": held, "detail": f"{r.status}: {r.detail} ({wall:.1f} s)"}
            if launcher.poll() is not None or sandbox._LAUNCHER.proc is not launcher:
                # blame the attack that did it; the evaluator starts a new launcher for the next
                out[name] = {"held": False, "detail": "the launcher was killed or restarted"}
                sandbox.run_program("def f():\n    return 1\n", "def check(c):\n    c()\n", "f")
                launcher = sandbox._LAUNCHER.proc
        for name, why in _host_checks(ctx).items():
            out[name] = {"held": False, "detail": why}
        good = sandbox.run_program("def f(x):\n    return 2 * x\n", "def check(c):\n    assert c(2) == 4\n", "f")
        out["evaluator_still_works"] = {"held": good.passed, "detail": good.status}
        return out
    finally:
        canary.unlink(missing_ok=True)
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def concurrent(sandbox, n: int = 20) -> bool:
    """One evaluator's share of the two-at-once check: n correct solutions (and a kill -1
    between them) must all pass while another evaluator does the same."""
    ok = True
    for i in range(n):
        sandbox.run_program("import os\ndef f():\n    try:\n        os.kill(-1, 9)\n    except OSError:\n"
                            "        pass\n    return 0\n", "def check(c):\n    c()\n", "f")
        r = sandbox.run_program(f"import time\ndef f(x):\n    time.sleep(0.02)\n    return x + {i}\n",
                                f"def check(c):\n    assert c(1) == {1 + i}\n", "f")
        ok &= r.passed
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandbox", required=True, help="folder holding sandbox.py")
    ap.add_argument("--concurrent", action="store_true", help="the two-evaluators check")
    a = ap.parse_args()
    sys.path.insert(0, a.sandbox)
    import sandbox

    if a.concurrent:
        return 0 if concurrent(sandbox) else 1
    out = run_all(sandbox)
    me = [sys.executable, os.path.abspath(__file__), "--sandbox", a.sandbox, "--concurrent"]
    pair = [subprocess.Popen(me) for _ in range(2)]
    codes = [p.wait() for p in pair]
    out["two_evaluators_at_once"] = {"held": codes == [0, 0], "detail": f"exit codes {codes}"}
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if all(v["held"] for v in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
