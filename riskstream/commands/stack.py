"""`riskstream stack up|down|status`: the embedded services alone."""

from __future__ import annotations

import argparse
import sys

from riskstream.commands import add_broker_option, with_broker
from riskstream.settings import load_settings
from riskstream.stack import EmbeddedStack, pid_alive, running_stack, stop_detached


def _up(args: argparse.Namespace) -> int:
    settings = with_broker(load_settings(args.config), args)
    stack = EmbeddedStack(settings, detached=True)
    state = stack.start(progress=lambda s: print(f"  up: {s}", file=sys.stderr))
    data_dir = settings.data_dir.resolve()
    supervisor = start_supervisor(settings)
    print(f"  up: supervisor pid {supervisor} (starts a service again if it exits)", file=sys.stderr)
    # stdout carries only the export lines, so `eval "$(riskstream stack up)"` works.
    print(f"export RISKSTREAM_DATA_DIR={data_dir}")
    print(f"export RISKSTREAM_KAFKA_BOOTSTRAP={state['kafka']}")
    print(f"export RISKSTREAM_REDIS_URL={state['redis']}")
    print(
        "Stack is up. Next: `riskstream worker` in another shell, `riskstream replay FILE --stream transactions`,\n"
        "`riskstream sql \"SHOW TABLES\"`; stop it with `riskstream stack down`. Logs: "
        f"{data_dir / 'logs'}",
        file=sys.stderr,
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    stopped = stop_detached(settings)
    if stopped:
        print(f"Stopped: {', '.join(stopped)}. Data kept in {settings.data_dir.resolve()} "
              "(the embedded broker starts empty next time).")
    else:
        print(f"No embedded stack was running under {settings.data_dir.resolve()}.")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    state = settings.stack_state()
    if not state:
        print(f"No embedded stack under {settings.data_dir.resolve()}. Start one: `riskstream stack up`.")
        return 1
    healthy = running_stack(settings)
    restarts = state.get("restarts", {})
    for name, pid in state.get("pids", {}).items():
        again = restarts.get(name)
        print(f"{name:8s} pid {pid:<8d} {'running' if pid_alive(pid) else 'STOPPED'}"
              + (f"  (started again {again['count']}x, last at {again['last']}; see logs/{name}.log)" if again else ""))
    if state.get("supervisor"):
        print(f"{'supervisor':8s} pid {state['supervisor']:<8d} {'running' if pid_alive(state['supervisor']) else 'STOPPED'}")
    print(f"kafka    {state.get('kafka')}\nredis    {state.get('redis')}\nqueries  {state.get('sink_query', '-')}")
    if not healthy:
        print("Some services are down; the stale state was cleared. Run `riskstream stack up` again.")
        return 1
    return 0


def start_supervisor(settings) -> int:
    """A detached `riskstream stack supervise` for the services just started; its pid goes in
    stack.json so that `stack down` stops it first."""
    import json
    import os
    import subprocess

    log = settings.data_dir.resolve() / "logs" / "supervisor.log"
    env = {**os.environ, "RISKSTREAM_DATA_DIR": str(settings.data_dir.resolve()), "RISKSTREAM_BROKER": settings.broker}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "riskstream", "stack", "supervise"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    path = settings.stack_file()
    state = json.loads(path.read_text())
    state["supervisor"] = proc.pid
    path.write_text(json.dumps(state, indent=2))
    return proc.pid


def _supervise(args: argparse.Namespace) -> int:
    from riskstream.supervisor import supervise_detached

    return supervise_detached(load_settings(args.config))


def register(sub) -> None:
    p = sub.add_parser("stack", help="Start, stop or inspect the embedded broker, Valkey and ClickHouse sink.")
    ss = p.add_subparsers(dest="stack_command", metavar="up|down|status", required=True)
    up = ss.add_parser("up", help="Start the services and print export lines for `eval`.")
    add_broker_option(up)
    up.set_defaults(run=_up)
    ss.add_parser("down", help="Stop the services started by `stack up`.").set_defaults(run=_down)
    ss.add_parser("status", help="Show what is running, and what was started again.").set_defaults(run=_status)
    ss.add_parser("supervise", help="(started by `stack up`) start a service again when it exits.").set_defaults(
        run=_supervise)
