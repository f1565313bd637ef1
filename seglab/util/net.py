"""Can a download start?  A short TCP check before libraries that retry for minutes (Keras'
`get_file`, tensorflow-datasets) try, so offline users get a clear error in seconds."""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

# How long a server may take to answer before seglab calls it unreachable: the tracking server's
# /health, the Keras weights' host.  Long enough for a slow network, short against minutes of retries.
# (`data.source.connect_timeout` of data=pets is the same check, set in the YAML.)
REACHABILITY_TIMEOUT_S = 5.0


def download_endpoint(url: str) -> tuple[str, int]:
    """The host a download of `url` connects to: the HTTPS/HTTP proxy when one applies, else the server."""
    scheme = urllib.parse.urlsplit(url).scheme or "https"
    proxy = urllib.request.getproxies().get(scheme)
    direct = not proxy or urllib.request.proxy_bypass(urllib.parse.urlsplit(url).hostname or "")
    target = urllib.parse.urlsplit(url if direct else proxy)
    return target.hostname or "", target.port or (443 if target.scheme == "https" else 80)


def unreachable(url: str, timeout: float) -> str | None:
    """None if a TCP connection towards `url` (through its proxy, if any) opens within `timeout`
    seconds, else why not.  Runs in a daemon thread because name resolution ignores socket timeouts."""
    return tcp_unreachable(*download_endpoint(url), timeout)


def tcp_unreachable(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to `host`:`port` opens within `timeout` seconds, else why not (as `unreachable`)."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port}: {type(err).__name__}: {err}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no connection within {timeout:g} s"
