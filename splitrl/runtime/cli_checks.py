"""Checks of `splitrl-cloud` / `splitrl-edge` arguments that run before the (~20 s) model load, so a
typo costs a one-line error naming the flag, the file and what to do, not a traceback after the load."""

from __future__ import annotations

import errno
import socket
from pathlib import Path


class CliError(ValueError):
    pass


def check_model(path: str | None) -> None:
    """--model exists (or, without it, the embedded model's package is installed)."""
    if path is None:
        from splitrl.lm.model import ModelLoadError, embedded_gguf
        try:
            embedded_gguf()
        except ModelLoadError as e:
            raise CliError(f"--model not given and {e}") from None
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise CliError(f"--model {p}: no such file or directory; give a Hugging Face model directory or a .gguf file")


def parse_address(text: str, flag: str = "--cloud") -> tuple[str, int]:
    """'host:port' or '[v6 address]:port' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise CliError(f"{flag} {text!r}: write host:port, e.g. {flag} 127.0.0.1:7341")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise CliError(f"{flag} {text!r}: put an IPv6 address in brackets, e.g. {flag} [::1]:7341")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"{flag} {text!r}: the port must be a number in 1..65535")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a taken port is reported before the model load."""
    if not 0 <= port <= 65535:
        raise CliError(f"--port {port}: must be in 0..65535 (0 picks a free port)")
    try:
        return socket.create_server((host, port))
    except socket.gaierror as e:
        raise CliError(f"--host {host}: cannot resolve it ({e.strerror}); give an address such as 127.0.0.1") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise CliError(f"--port {port}: address {host}:{port} is already in use (another splitrl-cloud?); "
                           "pick another --port or stop that process") from None
        if e.errno == errno.EACCES:
            raise CliError(f"--port {port}: permission denied; use a port >= 1024") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise CliError(f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
        raise CliError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
