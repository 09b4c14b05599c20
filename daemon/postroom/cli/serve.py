"""`postroom serve`: the daemon in the foreground (systemd Type=notify), or its supervisor when
several processes are configured.

Either way it first binds every listening socket, once and without SO_REUSEPORT, so a second
`postroom serve` on the same ports exits at once saying so. The single daemon serves from those
sockets; with several processes they survive the exec into the supervisor, which hands them to its
children (postroom.listen). A child (started by the supervisor) binds nothing: it adopts them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import click

from postroom.cli.common import config_option, config_path_from, fail, settings_from
from postroom.core.errors import PostroomError, SchemaNotCurrentError


@click.command()
@config_option
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from postroom import listen, supervisor
    from postroom.app import Daemon
    from postroom.logs import configure_logging
    from postroom.signals import install_signal_handlers

    settings = settings_from(ctx)
    configure_logging(settings.log)
    # The SQLite writer and the drivers' threads hand results back through the GIL; with the
    # default 5 ms switch interval a busy loop thread made each group commit wait several ms
    # (docs/benchmarks.md). A shorter interval makes those hand-overs prompt.
    sys.setswitchinterval(0.0005)
    processes = settings.processes.resolved(os.cpu_count())
    is_child = supervisor.CHILD_ENV in os.environ
    try:
        if is_child:
            supervisor.die_with_supervisor()
            sockets = listen.adopt_inherited(os.environ)
            if sockets is None:
                fail(f"started as a daemon process without ${listen.LISTEN_FDS_ENV}")
        else:
            sockets = listen.bind_listeners(
                listen.configured_listeners(settings.smtp, settings.http)
            )
    except listen.ListenError as exc:
        fail(str(exc))

    if processes > 1 and not is_child:
        # Become the small supervisor program (same pid): it starts `processes` children, each
        # a full daemon like this one would have been, serving from the sockets bound above.
        config_path = str(config_path_from(ctx).resolve())
        argv = supervisor.exec_argv(config_path, processes, settings.processes.restart_delay,
                                    settings.delivery.drain_grace + 15, settings.log.level,
                                    settings.log.format)  # fmt: skip
        env = {**os.environ, listen.LISTEN_FDS_ENV: listen.hand_down(sockets)}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)

    async def main_loop() -> None:
        stop = asyncio.Event()
        daemon = Daemon(settings, listen_sockets=sockets)
        install_signal_handlers(stop, daemon.request_reload)
        running = asyncio.create_task(daemon.run(stop))
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            supervisor.report_ready_to_supervisor()
        else:
            ready.cancel()
        await running

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main_loop())
    except* SchemaNotCurrentError as group:
        fail(str(group.exceptions[0]))
    except* PostroomError as group:
        fail(f"cannot run: {group.exceptions[0]}")
    except* OSError as group:
        fail(f"cannot start: {group.exceptions[0]}")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed and not turned off (POSTROOM_UVLOOP=0); else asyncio's.

    The daemon spends much of a core in the event loop itself (socket reads and writes, callbacks,
    timers); uvloop does that work in C. Everything postroom uses (listeners on inherited sockets,
    STARTTLS on both sides, signal handlers, executors) runs on either loop.
    """
    if os.environ.get("POSTROOM_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
