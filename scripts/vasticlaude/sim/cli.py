"""vasticlaude sim: a local Vast.ai for rehearsals and tests.

The official `vastai` CLI and SDK talk to it through VAST_URL; its instances are
real SSH endpoints on 127.0.0.1 that run commands in a per-instance home
directory. No root, no network, no money.

Usage:
  vasticlaude sim serve [--port N] [--state DIR] [--seed S] [--time-scale X] [--api-key KEY]
                        [--market FILE] [--machines N] [--balance USD] [--realism]
  vasticlaude sim start [same flags; state defaults to $VASTICLAUDE_HOME/sim]
  vasticlaude sim stop | status | env
  vasticlaude sim fault KIND [--instance I | --offer O | --machine M] [options]
  vasticlaude sim fault clear

--realism (or `sim fault realism`) turns on every realism behaviour below at once, the
per-instance ones at Vast-like rates (seeded), durations scaled by --time-scale.

Fault kinds:
  offer-vanish    the offer is gone when rented (404 no_such_ask); --when now hides it at once
  offer-busy      the offer cannot schedule: 410 with cancel_unavail, else a stopped instance
  stuck-loading   instances never leave `loading`
  fail-start      instances end `exited` (or `created` with --mode created) with an OCI error;
                  --mode manifest: stays `created`, "manifest ... not found"; --mode docker-build:
                  `loading` with intended `stopped`, "docker_build() error..."
  preempt         an interruptible instance is outbid: stopped, processes killed, data kept;
                  it resumes when its bid reaches --bid (default 1.5x) or after --seconds;
                  --intended stopped also marks it stopped by intent (as dstack sees Vast do),
                  so it waits for a `start` before it can resume
  host-down       the host goes offline: SSH gone, processes killed, billing paused;
                  with --seconds S it comes back after S and the container restarts
  container-exit  the container dies: `exited` (with --seconds S: restarted after S)
  ssh-drop        current SSH connections drop; --refuse N new ones are refused too
  http            the next --count requests (or a --rate share) matching --path/--method get
                  --status (429, 500, 502, 503, 504…), with --retry-after S; --ghost lets the
                  request take effect anyway (an ambiguous create)
  slow            the next --count matching requests wait --delay seconds
  balance         --set USD or --add USD (zero balance stops instances)

Realism kinds (what the real Vast does; sources in README.md). Scope: --instance I (now),
--offer O / --machine M (instances rented there later), or none (every instance; --rate P
for a seeded share of them):
  ip-whitespace      public_ipaddr ends in a newline
  ssh-keys-wrapped   GET /ssh/ answers {"ssh_keys": [...]} instead of a list (global)
  destroyed-404      a gone instance's GET answers 404 no_such_instance
                     (--mode destroyed|terminated: a row whose status says so)
  direct-ssh-dead    --mode null (ports["22/tcp"] is null, port closed) | refuse | blackhole
  proxy-ssh-dead     --mode tls (answers garbage) | refuse | blackhole; direct still works
  frozen             --instance I [--seconds S]: paused, GPU billed, SSH unanswered
  rebooting          --instance I [--seconds S]: reboot through `rebooting` now; without
                     --instance every API reboot reads `rebooting` for --seconds first
  scheduling         [--seconds S]: a start waits in `scheduling` ("Your GPU is currently in
                     use.") for S seconds, or until the fault is cleared
  unknown            --instance I [--seconds S]: no heartbeat for S (default 10) seconds
  bid-too-low        [--bid B]: an interruptible create bidding under B (default 1.25 x
                     min_bid) gets 400 insufficient_bid and a stopped instance billing storage
  slow-boot          [--seconds S]: the first image pull takes S (default 600) seconds,
                     with pull progress in status_msg
  bandwidth-billing  bytes through the instance's SSH ports are billed at inet_*_cost $/GB
  image-minimal      [--tools rsync,curl,pkill]: those commands are missing in the instance
  df-host            df inside the instance reports the host's disk
  list-v0-gone       GET /api/v0/instances/ answers 410 (vastai 1.9.1 uses v1)

Object store kinds (the sandbox's S3-compatible results store; until cleared, or --count N):
  store-slow         every store request waits --delay seconds (default 1)
  store-5xx          store requests answer --status (default 503 SlowDown; 500 InternalError)
  store-denied       store requests answer 403 AccessDenied (a revoked key, a wrong bucket policy)

Exit codes: 0 ok · 1 failed · 2 usage · 3 the sandbox is not running or refused the call.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vasticlaude.core.numbers import bounded
from vasticlaude.errors import API, USAGE, Error
from vasticlaude.output import emit, fail
from vasticlaude.store.jsonfile import read_json
from vasticlaude.sim.client import (
    admin_call,
    read_info,
    running_info,
    start_background,
    stop_background,
)
from vasticlaude.store import paths


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except Error as err:
        return fail(err, "--json" in argv, "vasticlaude sim")
    try:
        return args.func(args)
    except Error as err:
        return fail(err, getattr(args, "json", False), "vasticlaude sim")


# ----- serve / start / stop ----------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from vasticlaude.sim.server import (
        serve,  # aiohttp and asyncssh load only for the server itself
    )
    serve(_settings(args, args.state or paths.sim_dir()))
    return 0


def _settings(args: argparse.Namespace, state: Path):
    from vasticlaude.sim.server import Settings
    return Settings(state_dir=Path(state).resolve(), port=args.port, seed=args.seed,
                    time_scale=args.time_scale, api_key=args.api_key,
                    market_file=Path(args.market).resolve() if args.market else None,
                    machines=args.machines, balance=args.balance, realism=args.realism, idle_exit=args.idle_exit)


def cmd_start(args: argparse.Namespace) -> int:
    state = Path(args.state or paths.sim_dir()).resolve()
    info = running_info(state)
    if info is None:
        info = start_background(state, _serve_flags(args))
    emit(info_view(info), args.json, _env_text)
    return 0


def _serve_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--port", str(args.port), "--seed", str(args.seed), "--time-scale", str(args.time_scale),
             "--machines", str(args.machines), "--balance", str(args.balance)]
    if args.api_key:
        flags += ["--api-key", args.api_key]
    if args.market:
        flags += ["--market", str(Path(args.market).resolve())]
    if args.realism:
        flags.append("--realism")
    if args.idle_exit:
        flags += ["--idle-exit", str(args.idle_exit)]
    return flags


def cmd_stop(args: argparse.Namespace) -> int:
    state = Path(args.state or paths.sim_dir()).resolve()
    info = read_info(state)
    stopped = stop_background(state)
    emit({"stopped": stopped, "pid": info.get("pid") if info else None}, args.json,
         lambda d: "sandbox stopped." if d["stopped"] else "no sandbox was running.")
    return 0


# ----- status / env ----------------------------------------------------------------------------
def _running(args: argparse.Namespace) -> dict:
    """The info of the sandbox these flags name, or an Error (exit 3) when none is running."""
    info = running_info(Path(args.state or paths.sim_dir()).resolve())
    if info is None:
        raise Error("sim_down", "no sandbox is running", "Start one with 'vasticlaude sim start'.", API)
    return info


def cmd_status(args: argparse.Namespace) -> int:
    info = _running(args)
    idle = read_json(Path(args.state or paths.sim_dir()).resolve() / "idle.json") or {}
    data = {**info_view(info), "state": admin_call(info, "GET", "/sim/state"),
            "idle_exit_s": idle.get("idle_exit_s"), "stops_at": idle.get("stops_at")}
    emit(data, args.json, _status_text)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    emit(info_view(_running(args)), args.json, _env_text)
    return 0


def info_view(info: dict) -> dict:
    store = info.get("store") or {}
    return {"url": info["url"], "api_key": info["api_key"], "pid": info["pid"], "time_scale": info["time_scale"],
            "store_url": store.get("endpoint_url"), "store_bucket": store.get("bucket")}


def _env_text(data: dict) -> str:
    # The sandbox key opens only this local sandbox; printing it is the point of `env`.
    store = (f"\n# results store (S3-compatible): {data['store_url']} bucket {data['store_bucket']}"
             if data.get("store_url") else "")
    return (f"export VAST_URL={data['url']}\nexport VAST_API_KEY={data['api_key']}\n"
            "export VASTAI_NO_UPDATE_CHECK=1" + store)


def _status_text(data: dict) -> str:
    state = data["state"]
    lines = [f"sandbox {data['url']} (pid {data['pid']}, time scale {data['time_scale']}): "
             f"balance ${state['balance']:.2f}, spent ${state['spent']:.4f}, {len(state['instances'])} instance(s)"]
    lines += [f"  {i['id']} {i['actual_status']:<8} {i['gpu_name']} ${i['dph_total']:.3f}/h {i['label'] or ''}"
              for i in state["instances"]]
    lines += [f"  fault: {f}" for f in state["faults"]]
    lines += [f"  realism: {kind} {json.dumps(spec, sort_keys=True)}" for kind, spec in sorted(state.get("realism", {}).items())]
    if data.get("stops_at"):
        lines.append(f"  idle: stops by itself at {time.strftime('%H:%M:%S', time.localtime(data['stops_at']))} "
                     f"unless an instance or a request comes first ({data['idle_exit_s']:g} s idle)")
    elif data.get("idle_exit_s"):
        lines.append(f"  idle: stops by itself {data['idle_exit_s']:g} s after its last instance and request")
    return "\n".join(lines)


# ----- faults ----------------------------------------------------------------------------------
def cmd_fault(args: argparse.Namespace) -> int:
    info = _running(args)
    if args.kind == "clear":
        result = admin_call(info, "DELETE", "/sim/faults")
    else:
        result = admin_call(info, "POST", "/sim/faults", _fault_spec(args))
    emit(result, args.json, lambda d: json.dumps(d, sort_keys=True))
    return 0


_FAULT_FIELDS = ("instance", "offer", "machine", "mode", "status", "count", "rate", "retry_after", "path",
                 "method", "ghost", "delay", "seconds", "bid", "refuse", "set", "add", "when", "intended", "tools")


def _fault_spec(args: argparse.Namespace) -> dict:
    spec = {"kind": args.kind}
    for name in _FAULT_FIELDS:
        value = getattr(args, name)
        if value is not None and value is not False:
            spec[name] = value
    if args.unlimited:
        spec["count"] = None
    return spec


# ----- argument parsing ------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """A usage error is an Error (exit 2, an envelope with --json), as in the product's parsers."""

    def error(self, message: str):  # type: ignore[override]
        raise Error("usage", message, f"Run {self.prog} --help for the flags.", USAGE)


def number(most: float, least: float = 0.0, *, zero: bool = False, whole: bool = False):
    """argparse `type=`: the product's rule for numbers (core.numbers), a usage error naming the flag."""
    def parse(text: str) -> float:
        try:
            return bounded(text, most, least, zero=zero, whole=whole)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


# The ranges of the sandbox's numeric flags (the product's rule: finite, bounded, usage error naming the flag).
_ID = number(2 ** 63, whole=True)
_WHOLE = number(10 ** 9, whole=True, zero=True)
_SECONDS = number(30 * 86400, zero=True)
_USD = number(10 ** 9, zero=True)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vasticlaude sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (("serve", cmd_serve, "run in the foreground"),
                                  ("start", cmd_start, "run in the background and print its env")):
        p = sub.add_parser(name, help=help_text)
        _server_flags(p)
        p.set_defaults(func=func)
    for name, func, help_text in (("stop", cmd_stop, "stop the background sandbox and its instances"),
                                  ("status", cmd_status, "show the sandbox, balance and instances"),
                                  ("env", cmd_env, "print export lines for VAST_URL and VAST_API_KEY")):
        p = sub.add_parser(name, help=help_text)
        _common(p)
        p.set_defaults(func=func)
    fault = sub.add_parser("fault", help="inject a fault (see the kinds above), or 'clear'")
    _common(fault)
    _fault_flags(fault)
    fault.set_defaults(func=cmd_fault)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", help="sandbox state dir (default $VASTICLAUDE_HOME/sim)")
    p.add_argument("--json", action="store_true", help="print one JSON envelope on stdout")


def _server_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--port", type=number(65535, whole=True, zero=True), default=0,
                   help="API port on 127.0.0.1 (0 = any free one)")
    p.add_argument("--seed", type=_WHOLE, default=1, help="seed of the generated market")
    p.add_argument("--time-scale", type=number(1000, zero=True), default=1.0,
                   help="multiplies Vast-like delays (boot, image pull); 0 = no artificial delay")
    p.add_argument("--api-key", help="the account's API key (default: generated, kept in the state)")
    p.add_argument("--market", help="JSON file of offers to use instead of the generated market")
    p.add_argument("--machines", type=number(100_000, whole=True), default=60, help="size of the generated market")
    p.add_argument("--balance", type=_USD, default=100.0, help="starting credit in USD")
    p.add_argument("--idle-exit", type=_SECONDS, default=0.0, metavar="S",
                   help="stop by itself after S seconds with no instance and no request (default 0: never)")
    p.add_argument("--realism", action="store_true",
                   help="turn on every realism behaviour (what the real Vast does; see the fault kinds)")


def _fault_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", help="fault kind, or 'clear'")
    for flag in ("--instance", "--offer", "--machine"):
        p.add_argument(flag, type=_ID)
    for flag in ("--count", "--refuse"):
        p.add_argument(flag, type=_WHOLE)
    p.add_argument("--status", type=number(599, zero=True, whole=True), help="HTTP status (0: a delay only)")
    p.add_argument("--rate", type=number(1, zero=True), help="share of matching requests (0-1)")
    for flag in ("--retry-after", "--delay", "--seconds"):
        p.add_argument(flag, type=_SECONDS)
    p.add_argument("--bid", type=number(10_000), help="$/h")
    p.add_argument("--set", type=_USD, help="balance: the new balance in USD")
    p.add_argument("--add", type=number(10 ** 9, -10 ** 9), help="balance: USD to add (negative to debit)")
    p.add_argument("--mode", choices=("exited", "created", "manifest", "docker-build", "null", "refuse",
                                      "blackhole", "tls", "404", "destroyed", "terminated"),
                   help="fail-start, direct-ssh-dead, proxy-ssh-dead, destroyed-404: how")
    p.add_argument("--tools", help="image-minimal: commands missing from the image (default rsync,curl,pkill)")
    p.add_argument("--when", choices=("on-rent", "now"))
    p.add_argument("--intended", choices=("running", "stopped"), help="preempt: the intended state Vast shows")
    p.add_argument("--path", help="regex on the request path (e.g. 'asks' for creates)")
    p.add_argument("--method", help="HTTP method to match")
    p.add_argument("--ghost", action="store_true", help="the failing request still takes effect")
    p.add_argument("--unlimited", action="store_true", help="fire on every match until cleared")
