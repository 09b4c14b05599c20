"""Running several daemon processes on one host, so ingest and delivery use every core.

Each child is a full `postroom serve` process: it serves from the listening sockets `postroom serve`
bound before it exec'd this program (inherited descriptors, handed to every child by `pass_fds` and
named in $POSTROOM_LISTEN_FDS; see postroom.listen), so the ports have one owner and a second
instance is refused at bind. Its delivery worker claims from the shared queue exactly as a second
host would. The supervisor owns the systemd conversation: READY=1 once every child reports ready
over a pipe, WATCHDOG=1 while it lives, STOPPING=1 and SIGTERM to the children on the way out. A
child that dies is started again on the same sockets; its leased deliveries come back through the
reaper. Nothing on that path may take the supervisor down, or every child dies with it (PDEATHSIG).
Metrics use prometheus-client's multiprocess mode, so /metrics in any child shows the sum; the
HTTP API's rate limits are one table all children map (postroom.ratelimit.table), so a key's
quota is the daemon's, not each process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import multiprocess

from postroom.listen import LISTEN_FDS_ENV, ListenError, describe_fds, encode_fds, inherited_fds
from postroom.metrics import MULTIPROCESS_ENV
from postroom.ratelimit.table import RATE_LIMIT_FILE_ENV, create_table_file
from postroom.service_notify import ServiceNotifier

logger = logging.getLogger("postroom.supervisor")  # also when run as __main__

READY_FD_ENV = "POSTROOM_READY_FD"
CHILD_ENV = "POSTROOM_CHILD_INDEX"
PARENT_ENV = "POSTROOM_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1  # prctl(2)
START_TIMEOUT = 120.0


@dataclass
class _Child:
    index: int
    process: asyncio.subprocess.Process
    ready: asyncio.Future[bool]


class Supervisor:
    def __init__(
        self,
        child_argv: Sequence[str],
        count: int,
        *,
        listen_fds: Mapping[str, Sequence[int]],
        restart_delay: float,
        stop_grace: float,
        notifier: ServiceNotifier,
    ):
        self._argv = list(child_argv)
        self._count = count
        # Kept open while children may still be started; closed when stopping (see _stop_children).
        self._listen_fds = {name: list(fds) for name, fds in listen_fds.items()}
        self._restart_delay = restart_delay
        self._stop_grace = stop_grace
        self._notifier = notifier
        self._children: dict[int, _Child] = {}
        self._metrics_dir = tempfile.mkdtemp(prefix="postroom-metrics-")
        self._rate_dir = tempfile.mkdtemp(prefix="postroom-ratelimit-")
        self._rate_table = Path(self._rate_dir) / "buckets"
        create_table_file(self._rate_table)

    async def _spawn(self, index: int) -> _Child:
        read_end, write_end = os.pipe()
        env = {**os.environ, READY_FD_ENV: str(write_end), CHILD_ENV: str(index),
               PARENT_ENV: str(os.getpid()), MULTIPROCESS_ENV: self._metrics_dir,
               RATE_LIMIT_FILE_ENV: str(self._rate_table),
               LISTEN_FDS_ENV: encode_fds(self._listen_fds)}  # fmt: skip
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        listening = [fd for fds in self._listen_fds.values() for fd in fds]
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv, env=env, pass_fds=(write_end, *listening)
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()

        def on_readable() -> None:
            data = os.read(read_end, 16)
            loop.remove_reader(read_end)
            os.close(read_end)
            if not ready.done():
                ready.set_result(bool(data))

        loop.add_reader(read_end, on_readable)
        child = _Child(index, process, ready)
        self._children[index] = child
        return child

    def forward_reload(self) -> None:
        """SIGHUP to the supervisor reaches every daemon process."""
        for child in self._children.values():
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGHUP)

    async def run(self, stop: asyncio.Event) -> int:
        """Start the children, keep them running until `stop`, stop them; return an exit code."""
        try:
            for index in range(self._count):
                await self._spawn(index)
            if not await self._all_ready(stop):
                await self._stop_children()
                return 1
            status = f"{self._count} processes; {describe_fds(self._listen_fds)}"
            self._notifier.ready(status)
            logger.info("postroom ready with %s", status)
            watchdog = asyncio.create_task(self._notifier.run_watchdog(stop))
            await self._keep_alive(stop)
            self._notifier.stopping()
            await self._stop_children()
            await watchdog
            return 0
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            shutil.rmtree(self._rate_dir, ignore_errors=True)

    async def _all_ready(self, stop: asyncio.Event) -> bool:
        waits = {asyncio.ensure_future(c.ready) for c in self._children.values()}
        exits = {asyncio.ensure_future(c.process.wait()) for c in self._children.values()}
        stopping = asyncio.ensure_future(stop.wait())
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        try:
            while waits:
                done, _ = await asyncio.wait(
                    waits | exits | {stopping},
                    timeout=max(0.0, deadline - asyncio.get_running_loop().time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    logger.error("daemon processes not ready after %.0f s", START_TIMEOUT)
                    return False
                if stopping in done or done & exits:
                    return False  # a child failed to start: its own error is on stderr
                waits -= done
            return True
        finally:
            for future in (*exits, stopping):
                future.cancel()

    async def _keep_alive(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                exits = {
                    asyncio.ensure_future(c.process.wait()): c for c in self._children.values()
                }
                done, _ = await asyncio.wait(
                    {*exits, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for future in exits:
                    if future not in done:
                        future.cancel()
                if stop.is_set():
                    return
                for future in done:
                    await self._restart(exits[future], stop)
        finally:
            stopping.cancel()

    async def _restart(self, child: _Child, stop: asyncio.Event) -> None:
        """Start a dead child again, on the same sockets. Nothing here may raise: the supervisor
        dying would take every other child with it (PDEATHSIG), and with them all delivery."""
        logger.error(
            "daemon process %d (pid %d) exited with %s; starting it again",
            child.index, child.process.pid, child.process.returncode,
        )  # fmt: skip
        self._forget_metrics(child.process.pid)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._restart_delay)
            if stop.is_set():
                return
            try:
                await self._spawn(child.index)
                return
            except Exception:
                logger.exception("could not start daemon process %d; trying again", child.index)

    def _forget_metrics(self, pid: int) -> None:
        """Drop a dead process's live gauges from the multiprocess files. The directory is passed
        explicitly: prometheus-client would read it from $PROMETHEUS_MULTIPROC_DIR, which only the
        children have (a missing one raised TypeError here and took the supervisor down)."""
        try:
            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        except Exception:
            logger.exception("could not clean up the metrics of daemon process pid %d", pid)

    def _close_listeners(self) -> None:
        """No child will be started again: let the sockets close once the children close theirs,
        so new connections are refused instead of waiting in a queue nobody accepts from."""
        fds, self._listen_fds = self._listen_fds, {}
        for numbers in fds.values():
            for fd in numbers:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _stop_children(self) -> None:
        self._close_listeners()
        running = [c.process for c in self._children.values() if c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self._stop_grace)
            for process in running:
                if process.returncode is None:
                    logger.error("daemon process %d did not stop in time; killing it", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)


def child_argv(config_path: str) -> list[str]:
    return [sys.executable, "-m", "postroom.cli", "serve", "--config", config_path]


def exec_argv(config_path: str, count: int, restart_delay: float, stop_grace: float,
              log_level: str, log_format: str) -> list[str]:  # fmt: skip
    """The command line `postroom serve` replaces itself with to supervise `count` children."""
    return [sys.executable, "-m", "postroom.supervisor", "--config", config_path,
            "--processes", str(count), "--restart-delay", repr(restart_delay),
            "--stop-grace", repr(stop_grace), "--log-level", log_level, "--log-format", log_format]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The supervisor as its own small program: `postroom serve` execs it (same pid, so systemd's
    main process and its notify socket stay), and it loads neither the settings nor the daemon:
    ~36 MB instead of the ~100 MB of a full process that only waits on its children."""
    import argparse

    from postroom.logs import configure
    from postroom.signals import install_signal_handlers

    parser = argparse.ArgumentParser(prog="postroom-supervisor")
    parser.add_argument("--config", required=True)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--restart-delay", type=float, required=True)
    parser.add_argument("--stop-grace", type=float, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args(argv)
    configure(args.log_level, args.log_format)
    # `postroom serve` binds the sockets and execs this program with them; run alone, the
    # children would have nothing to serve from.
    try:
        listen_fds = inherited_fds(os.environ)
    except ListenError as exc:
        print(f"postroom-supervisor: {exc}", file=sys.stderr)
        return 2
    if not listen_fds:
        print(f"postroom-supervisor: no listening sockets in ${LISTEN_FDS_ENV}; "
              "start the daemon with `postroom serve`", file=sys.stderr)  # fmt: skip
        return 2

    async def supervise() -> int:
        stop = asyncio.Event()
        supervising = Supervisor(
            child_argv(args.config),
            args.processes,
            listen_fds=listen_fds,
            restart_delay=args.restart_delay,
            stop_grace=args.stop_grace,
            notifier=ServiceNotifier(os.environ),
        )
        install_signal_handlers(stop, supervising.forward_reload)
        return await supervising.run(stop)

    return asyncio.run(supervise())


def die_with_supervisor() -> None:
    """In a child: be killed when the supervisor dies, even by SIGKILL (Linux prctl).

    A `kill -9` of the daemon must stop all of it, as a crash would; orphaned children would keep
    serving with nobody to stop them. Under systemd the control group is killed anyway.
    """
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("could not tie this process to its supervisor: errno %d", ctypes.get_errno())
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def report_ready_to_supervisor() -> None:
    """In a child: tell the supervisor this process serves traffic (one byte on the pipe)."""
    fd = os.environ.get(READY_FD_ENV)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))


if __name__ == "__main__":
    sys.exit(main())
