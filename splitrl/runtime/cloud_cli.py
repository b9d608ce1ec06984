"""`splitrl-cloud` command line: check every argument, bind the port and start the health endpoint
before the model loads; then serve until SIGTERM (graceful drain) or Ctrl-C (immediate stop)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from splitrl.runtime import auth
from splitrl.runtime.cli_checks import CliError, bind, check_model
from splitrl.runtime.limits import Limits

# flag -> Limits field
LIMIT_FLAGS = {"max_conns": "max_conns", "max_unauth": "max_unauth", "max_sessions": "max_sessions",
               "max_conversations": "max_conversations",
               "handshake_timeout": "handshake_s", "read_timeout": "read_s", "step_timeout": "step_s",
               "session_ttl": "session_ttl_s", "drain_timeout": "drain_s", "max_new": "max_new", "max_rows": "max_rows"}


def parser() -> argparse.ArgumentParser:
    d = Limits()
    ap = argparse.ArgumentParser(prog="splitrl-cloud", description="Serve the cloud half of split inference.")
    ap.add_argument("--model", default=None, help="HF model directory or .gguf (default: the embedded SmolLM2)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=7341, help="0 picks a free port (printed at start-up)")
    auth_group = ap.add_mutually_exclusive_group()
    auth_group.add_argument("--token-file", default=None,
                            help=f"shared token (>= {auth.MIN_TOKEN_BYTES} bytes); peers must prove they hold it")
    auth_group.add_argument("--insecure-no-auth", action="store_true",
                            help="serve anyone who can connect (loopback tests, trusted networks)")
    ap.add_argument("--health-port", type=int, default=None,
                    help="HTTP /v2/health/live and /v2/health/ready on this port (same --host; 0 picks one)")
    ap.add_argument("--ffn-chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: never)")
    g = ap.add_argument_group("limits")
    g.add_argument("--max-conns", type=int, default=d.max_conns, help="authenticated connections")
    g.add_argument("--max-unauth", type=int, default=d.max_unauth, help="connections in the handshake")
    g.add_argument("--max-sessions", type=int, default=d.max_sessions, help="requests in flight")
    g.add_argument("--max-conversations", type=int, default=d.max_conversations,
                   help="chats whose KV caches are kept between turns (least recently used dropped first)")
    g.add_argument("--max-new", type=int, default=d.max_new, help="tokens one request may ask for")
    g.add_argument("--max-rows", type=int, default=d.max_rows, help="tokens in one step (a prefill)")
    g.add_argument("--handshake-timeout", type=float, default=d.handshake_s)
    g.add_argument("--read-timeout", type=float, default=d.read_s, help="seconds to the next frame")
    g.add_argument("--step-timeout", type=float, default=d.step_s, help="seconds for one step's compute")
    g.add_argument("--session-ttl", type=float, default=d.session_ttl_s, help="seconds a request may live")
    g.add_argument("--drain-timeout", type=float, default=d.drain_s, help="SIGTERM: seconds to finish in-flight work")
    return ap


def prepare(a: argparse.Namespace):
    """(token or None, limits, listener, health server or None), or CliError / TokenError."""
    if a.token_file is None and not a.insecure_no_auth:
        raise CliError(f"give --token-file FILE (a shared token of >= {auth.MIN_TOKEN_BYTES} bytes; "
                       f"{auth.MAKE_TOKEN_HINT}) or, to serve anyone who can connect, --insecure-no-auth")
    token = auth.load_token(a.token_file) if a.token_file else None
    values = {field: getattr(a, flag) for flag, field in LIMIT_FLAGS.items()}
    for flag, field in LIMIT_FLAGS.items():
        if not values[field] > 0:
            raise CliError(f"--{flag.replace('_', '-')} {values[field]}: must be > 0")
    check_model(a.model)
    listener = bind(a.host, a.port)
    health = None
    if a.health_port is not None:
        from splitrl.runtime.health import HealthServer
        try:
            health = HealthServer(a.host, a.health_port).start()
        except OSError as e:
            listener.close()
            raise CliError(f"--health-port {a.health_port}: cannot listen there ({e.strerror}); pick another") from None
    return token, Limits(**values), listener, health


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        token, limits, listener, health = prepare(a)
    except (CliError, auth.TokenError) as e:
        print(f"splitrl-cloud: {e}", file=sys.stderr)
        return 2
    if health is not None:
        print(f"splitrl-cloud: health on http://{health.host}:{health.port}/v2/health/ready", flush=True)
    import torch

    from splitrl.lm.model import ModelLoadError, load_causal_lm
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.split_model import SplitModel
    torch.set_num_threads(a.threads)
    try:
        lm = load_causal_lm(a.model)
        sm = SplitModel(lm.model, ffn_chunks=a.ffn_chunks)
    except (ModelLoadError, ValueError) as e:
        print(f"splitrl-cloud: {e}", file=sys.stderr)
        return 2
    server = CloudServer(sm, token=token, insecure_no_auth=token is None, limits=limits, eos=lm.tokenizer.eos_token_id,
                         model_name=lm.name, listener=listener)
    if health is not None:
        health.status = server.readiness
    signal.signal(signal.SIGTERM, lambda *_: server.request_drain())
    print(f"splitrl-cloud: serving {lm.name} on {server.host}:{server.port}, auth "
          f"{'on' if token is not None else 'OFF (--insecure-no-auth)'}", flush=True)
    try:
        server.serve_forever(a.duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if health is not None:
            health.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
