"""Whether this process can reach the Hugging Face Hub: asked once, before the first Hub id is loaded.

Without a network, huggingface_hub retries each request with back-off before it falls back to the local cache, for
every file of a model. On a machine without one (2026-12-01, 2 CPU cores, the tiny model): evaluating with a model
that was already in the cache took 195 s, against 7 s with this probe (`benchmarks/hub_offline.py`); failing on a
dataset that was not cached took 30 s, against 7 s with `HF_HUB_OFFLINE=1`. Compute nodes without internet, with a
filled cache, are a common way to train. So before the first Hub id a command loads, one TCP connection to the Hub's
endpoint is tried (`HF_ENDPOINT`, default huggingface.co); if none opens within `PROBE_SECONDS`, the process goes
offline as `HF_HUB_OFFLINE=1` would have it, and says so once: cached models and datasets load at once, others fail
at once with their one line. `HF_HUB_OFFLINE` set either way skips the probe.

Behind a proxy (the `*_PROXY` variables and `NO_PROXY`, read as huggingface_hub's HTTP client reads them), a direct
connection says nothing, so the probe asks the proxy instead: the Hub counts as unreachable when the proxy itself does
not answer (a proxy that is down, or only reachable from a login node) or answers the tunnel request for the Hub's
host with 502, 503 or 504 (it cannot reach the Hub). Any other answer, a request for credentials or a refusal by
policy included, and a proxy that accepts the connection but stays silent, leave the process online: going offline
wrongly would fail a model that is not cached yet, while staying online only costs time.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
PATH_PREFIXES = (".", "/", "~")  # a model or data spec that starts so is a local path, never a Hub id
DEFAULT_ENDPOINT = "https://huggingface.co"
# Modules that read the offline switch at import and look at their own copy afterwards: (module, attributes).
_SWITCHES = (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
             ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")))

_unreachable: str | None = None  # the endpoint that did not answer, once the probe has run and failed
_probed = False


def user_decided() -> bool:
    """Whether the user already said offline or not (huggingface_hub's own variables, set either way)."""
    return any(os.environ.get(name, "") != "" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


_PORTS = {"http": 80, "https": 443}


def _address(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `url`, the port from its scheme when the URL names none (ValueError for a port that is no
    number)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or _PORTS.get(parts.scheme, default_port)


def reachable(endpoint: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to `endpoint`'s host opens within `timeout` seconds."""
    try:
        with socket.create_connection(_address(endpoint, 443), timeout=timeout):
            return True
    except (OSError, ValueError):  # no such host, refused, timed out, no network
        return False


def proxy_for(endpoint: str) -> str | None:
    """The proxy a request to `endpoint` goes through, or None for a direct connection: from the environment as
    huggingface_hub's HTTP client reads it (urllib's `getproxies`: the scheme's proxy, else `ALL_PROXY`; a host in
    `NO_PROXY` goes direct)."""
    url = urlsplit(endpoint)
    proxies = urllib.request.getproxies()
    if url.hostname and urllib.request.proxy_bypass_environment(url.hostname, proxies):
        return None
    proxy = proxies.get(url.scheme) or proxies.get("all")
    return (proxy if "://" in proxy else f"http://{proxy}") if proxy else None


def without_credentials(proxy: str) -> str:
    """`proxy` as it may be logged: a password in it never reaches a log."""
    url = urlsplit(proxy)
    return url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()


_NO_ROUTE = (b"502", b"503", b"504")  # a proxy's answers for an upstream it cannot reach


def through_proxy(proxy: str, endpoint: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why the Hub at `endpoint` is not reachable through `proxy`, or None when it may be: the proxy does not accept a
    TCP connection within `timeout`, or (an http:// proxy) answers a CONNECT to the endpoint's host with 502, 503 or
    504. Proxies spoken to in TLS or SOCKS are judged by the connection alone."""
    url = urlsplit(proxy)
    shown = without_credentials(proxy)
    try:
        name, port = _address(endpoint, 443)
    except ValueError:  # a port that is no number: the Hub client will say so itself
        return None
    try:
        sock = socket.create_connection(_address(proxy, 1080), timeout=timeout)  # 1080: SOCKS's
    except (OSError, ValueError):  # no such host, refused, timed out, no network
        return f"the proxy {shown} did not answer within {timeout:.0f} s"
    with sock:
        if url.scheme != "http":
            return None
        host = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"  # an IPv6 address in brackets
        request = f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
        if url.username is not None:
            pair = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
            request += f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"
        try:
            sock.sendall(f"{request}\r\n".encode())
            status = sock.makefile("rb").readline(1024).split()
        except OSError:  # silent or closed: it may still reach the Hub, slowly
            return None
    if len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] in _NO_ROUTE:
        return f"the proxy {shown} answered {status[1].decode()} for it"
    return None


def go_offline() -> None:
    """This process and its children read only the local cache from now on, as with `HF_HUB_OFFLINE=1`."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module, names in _SWITCHES:
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, True)


def before_loading(name: str) -> None:
    """Call before loading the Hub id `name`: the first call in a process probes the Hub, and goes offline if it
    does not answer."""
    global _probed, _unreachable
    if _probed or user_decided():
        return
    _probed = True
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    proxy = proxy_for(endpoint)
    if proxy:
        why = through_proxy(proxy, endpoint)
    else:
        why = None if reachable(endpoint) else f"it did not answer within {PROBE_SECONDS:.0f} s"
    if why is None:
        return
    _unreachable = endpoint if proxy is None else f"{endpoint} through the proxy {without_credentials(proxy)}"
    go_offline()
    if os.environ.get("RANK", "0") == "0":  # under a launch every process probes; the first one says so
        log.info("%s: the Hugging Face Hub (%s) is not reachable: %s; reading models and datasets from the local "
                 "cache only (set HF_HUB_OFFLINE=1 to skip this check, or HF_HUB_OFFLINE=0 to stay online)", name,
                 endpoint, why)


def names_a_path(spec: str) -> bool:
    """Whether a model or data spec can only mean a local path: it starts with ./, / or ~, or it is no Hub id by
    huggingface_hub's own rule (more than one '/', a space, a letter outside ASCII). Such a spec that does not exist
    is a mistyped path, told so at once, not a Hub id the Hub is asked for (and whose error speaks of repo ids).

    >>> names_a_path("runs/x/sft"), names_a_path("runs/çıktı"), names_a_path("./sft"), names_a_path("openai/gsm8k")
    (True, True, True, False)
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if spec.startswith(PATH_PREFIXES):
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True
    return False


def unreachable_note() -> str:
    """A clause for an error about a Hub id, when the probe found the Hub unreachable; else ''."""
    return f"; the Hub ({_unreachable}) is not reachable from this machine, so only its local cache was read" \
        if _unreachable else ""


def failure_note(name: str) -> str:
    """The clauses for a Hub id `name` that failed to load: the Hub unreachable, and the local folder that holds no
    such model when its owner part is one (`runs/sft` meant as a path)."""
    owner = Path(name).parent
    if owner == Path(".") or not owner.is_dir():
        return unreachable_note()
    return f"{unreachable_note()}; if a folder was meant, {owner} has no {Path(name).name!r} (from {Path.cwd()})"
