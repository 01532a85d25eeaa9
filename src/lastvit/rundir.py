"""One live run per output folder, and nothing half-written when a run is interrupted.

:func:`claim_run` is a context manager around everything a command writes into its output folder:

- **Lock.** ``<out>/.lastvit.lock`` holds the PID, host, process start time, command and start time (JSON). It is
  created atomically (the content is written to a temporary file which is then hard-linked to the lock name, which
  fails when the lock exists; ``O_EXCL`` where links are unsupported) and removed on exit, on an exception and on
  SIGTERM (turned into :class:`RunInterrupted` while no other library has installed its own handler).
- **A live run** in the folder (the lock's PID is running on this host) refuses the new one at once with one line
  (:class:`RunDirError`). A **stale lock** (PID not running, or a PID reused by another process) is taken over with a
  note; a lock written on **another host** cannot be checked and is refused unless ``overwrite=True``.
- **A finished run** (the completion marker ``<out>/.lastvit-done.json`` that :func:`claim_run` writes on success, or
  a ``metrics.json``) is continued only with ``resume=True`` (commands that can resume), replaced only with
  ``overwrite=True``, and otherwise refused. ``--overwrite`` first deletes the files the finished run wrote (the
  marker lists every file created or changed inside ``out`` during the run; files that were there before, e.g.
  yours, are not listed and stay), then the marker and ``metrics.json``, so that the new run's outputs cannot mix
  with the old ones and a replacement that fails cannot be mistaken for a finished run.
- An **unfinished** run (files but no marker: killed, crashed) is continued: lastvit writes every output through
  :mod:`lastvit.io` (temporary file + rename), so what it left is either complete or absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DONE_NAME", "LOCK_NAME", "RunClaim", "RunDirError", "RunInterrupted", "claim_run", "finished_run",
           "sigterm_received"]

LOCK_NAME = ".lastvit.lock"
DONE_NAME = ".lastvit-done.json"


class RunDirError(ValueError):
    """The output folder cannot be used (live run, finished run without --resume/--overwrite, not a folder...)."""


class RunInterrupted(SystemExit):
    """SIGTERM arrived while a run held its folder (exit status 143, as a shell reports a SIGTERM kill)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


@dataclass
class RunClaim:
    """What :func:`claim_run` found and did: ``notes`` (stale lock taken over, finished run resumed/replaced)."""

    out: Path
    command: str
    lock: Path
    resumed: bool = False
    completed: bool = True  # set False for a run that ends without an exception but failed (no marker written)
    notes: list[str] = field(default_factory=list)


def _proc_start(pid: int) -> str | None:
    """The process start time (clock ticks since boot) from /proc, or None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: it exists
        pass
    except OSError:
        return False
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:  # the PID was reused by another process
            return False
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _create_lock(path: Path, info: dict[str, Any]) -> bool:
    """Create ``path`` holding ``info`` atomically; False when it exists already."""
    data = json.dumps(info, indent=1).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links: O_EXCL, then write
            try:
                fd2 = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "wb") as f:
                f.write(data)
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')}, {info.get('command') or 'unknown command'}, "
            f"started {info.get('started') or '?'}")


def finished_run(out: str | os.PathLike) -> str | None:
    """Why ``out`` holds a finished run (its completion marker, or a metrics.json), or None."""
    out = Path(out)
    if (out / DONE_NAME).is_file():
        return f"a finished run ({DONE_NAME})"
    if (out / "metrics.json").is_file():
        return "a finished run (metrics.json)"
    return None


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (mtime_ns, size) of the regular files under ``out`` (symlinks not followed; the lock,
    the marker and temporary files left out)."""
    snap: dict[str, tuple[int, int]] = {}
    for dirpath, _dirnames, filenames in os.walk(out):
        for name in filenames:
            if name.startswith(LOCK_NAME) or name == DONE_NAME:
                continue
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if not p.is_symlink():
                snap[p.relative_to(out).as_posix()] = (st.st_mtime_ns, st.st_size)
    return snap


def _previous_files(out: Path) -> list[str] | None:
    try:
        files = json.loads((out / DONE_NAME).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else None


def _remove_previous(out: Path, files: list[str]) -> int:
    """Delete the files a finished run recorded in its marker (only inside ``out``), then their empty folders."""
    root = out.resolve()
    n = 0
    dirs = set()
    for rel in files:
        p = (out / rel)
        try:
            if p.is_symlink() or not p.resolve().is_relative_to(root) or not p.is_file():
                continue
            p.unlink()
            n += 1
            dirs.update(q for q in p.parents if q != out and q.resolve().is_relative_to(root))
        except OSError:
            continue
    for d in sorted(dirs, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty
    return n


def _check_folder(out: Path) -> None:
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"is under {p}, which is a file"
                raise RunDirError(f"--out {out} {what}, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise RunDirError(f"--out {out}: {p} is not writable")
            return


@contextlib.contextmanager
def claim_run(out: str | os.PathLike, *, command: str, resume: bool = False, overwrite: bool = False,
              resumable: bool = True, quiet: bool = False) -> Iterator[RunClaim]:
    """Hold ``out`` for one run of ``command`` (see the module docstring); yields a :class:`RunClaim`.

    Raises :class:`RunDirError` (one line naming the folder and the reason) when the folder is in use, holds a
    finished run and neither ``resume`` (only where ``resumable``) nor ``overwrite`` is given, or is not a writable
    folder. On success the completion marker is written; on any exception the lock is removed and no marker written.
    """
    out = Path(out)
    _check_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only file system or a folder the user may not write (root included: sysfs)
        raise RunDirError(f"--out {out} is not writable: {e.strerror or e}") from None
    lock = out / LOCK_NAME
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "proc_start": _proc_start(os.getpid()), "command": command,
          "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    claim = RunClaim(out=out, command=command, lock=lock)
    for _attempt in range(3):
        if _create_lock(lock, me):
            break
        info = _read_lock(lock)
        if info is None:  # removed in between: try again
            continue
        if not info:  # being written right now, or garbage: a fresh one is live, an old one is stale
            try:
                age = time.time() - lock.stat().st_mtime
            except OSError:
                continue
            if age < 10:
                raise RunDirError(f"--out {out} is in use by another run (lock {lock} is being written)")
        elif info.get("host") != host:
            if not overwrite:
                raise RunDirError(f"--out {out} is locked by a run on another host ({_describe(info)}); this host "
                                  f"cannot tell whether it is still running: pass --overwrite if it is not, or "
                                  f"use another --out")
        elif _pid_alive(int(info.get("pid") or 0), info.get("proc_start")):
            raise RunDirError(f"--out {out} is in use by a live run ({_describe(info)}); wait for it or use "
                              f"another --out")
        # stale (or another host's lock with --overwrite): move it aside atomically, then take the folder
        aside = out / f"{LOCK_NAME}.stale.{os.getpid()}"
        try:
            os.replace(lock, aside)
        except FileNotFoundError:
            continue
        moved = _read_lock(aside)
        if info and moved and moved.get("pid") != info.get("pid"):  # a new run took it between read and move
            with contextlib.suppress(OSError):
                os.link(aside, lock)
            with contextlib.suppress(OSError):
                os.unlink(aside)
            raise RunDirError(f"--out {out} was just claimed by another run ({_describe(moved)})")
        with contextlib.suppress(OSError):
            os.unlink(aside)
        claim.notes.append(f"took over a stale lock in {out} ({_describe(info) if info else 'unreadable'})")
    else:
        raise RunDirError(f"--out {out}: could not create the lock {lock} (another run keeps claiming it)")

    previous_handler = None
    try:
        done = finished_run(out)
        if done is not None:
            if resume and resumable:
                claim.resumed = True
                claim.notes.append(f"resuming {done} in {out}")
            elif overwrite:
                previous = _previous_files(out)
                removed = _remove_previous(out, previous) if previous else 0
                for name in (DONE_NAME, "metrics.json"):
                    with contextlib.suppress(FileNotFoundError):
                        (out / name).unlink()
                what = f"its {removed} files removed" if previous else \
                    "no file list: its metrics.json removed, other files are replaced as they are rewritten"
                claim.notes.append(f"replacing {done} in {out} (--overwrite; {what})")
            else:
                how = "--resume to continue it or --overwrite" if resumable else "--overwrite"
                raise RunDirError(f"--out {out} holds {done}: pass {how} to replace it, or use another --out")
        if not quiet:
            for note in claim.notes:
                print(f"lastvit {command}: note: {note}", file=sys.stderr)
        before = _snapshot(out)
        kept = (_previous_files(out) or []) if claim.resumed else []
        previous_handler = _install_sigterm()
        _SIGTERM_SEEN[0] = False
        yield claim
        if sigterm_received():
            claim.completed = False
            claim.notes.append("SIGTERM received: the run stopped early and is not marked finished")
        if claim.completed:
            from lastvit.io import atomic_write

            after = _snapshot(out)
            files = sorted({*kept, *(f for f, st in after.items() if before.get(f) != st)} & set(after))
            atomic_write(out / DONE_NAME, json.dumps({**me, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                       "resumed": claim.resumed, "files": files}, indent=1) + "\n")
    finally:
        _restore_sigterm(previous_handler)
        info = _read_lock(lock)
        if info is not None and info.get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                lock.unlink()


_SIGTERM_SEEN = [False]


def sigterm_received() -> bool:
    """True when SIGTERM arrived during the current claimed run (also when a library handled it)."""
    return _SIGTERM_SEEN[0]


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM_SEEN[0] = True
    # Only raise when this is the installed handler: a library that installed its own handler and chains to the
    # previous one (Lightning's trainer does) runs its own shutdown; the run then ends without the completion
    # marker (claim_run checks sigterm_received()) and the ``finally`` of claim_run still removes the lock.
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise RunInterrupted(signum)


def _install_sigterm() -> Any:
    try:
        prev = signal.getsignal(signal.SIGTERM)
        if prev in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
            return prev
    except ValueError:  # not the main thread
        pass
    return None


def _restore_sigterm(prev: Any) -> None:
    if prev is None:
        return
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, prev)
