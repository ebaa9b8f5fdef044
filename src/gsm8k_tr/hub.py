"""Whether this process can reach the Hugging Face Hub: asked once, before the first Hub id is loaded.

Without a network, huggingface_hub retries each request with back-off before it falls back to the local cache, for
every file of a model. On a machine without one (2026-12-01, 2 CPU cores, the tiny model): evaluating with a model
that was already in the cache took 195 s, against 7 s with this probe (`benchmarks/hub_offline.py`); failing on a
dataset that was not cached took 30 s, against 7 s with `HF_HUB_OFFLINE=1`. Compute nodes without internet, with a
filled cache, are a common way to train. So before the first Hub id a command loads, one TCP connection to the Hub's
endpoint is tried (`HF_ENDPOINT`, default huggingface.co); if none opens within `PROBE_SECONDS`, the process goes
offline as `HF_HUB_OFFLINE=1` would have it, and says so once: cached models and datasets load at once, others fail
at once with their one line. Behind a proxy the probe cannot tell, so it is skipped; `HF_HUB_OFFLINE` set either way
skips it too.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
PATH_PREFIXES = (".", "/", "~")  # a model or data spec that starts so is a local path, never a Hub id
DEFAULT_ENDPOINT = "https://huggingface.co"
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# Modules that read the offline switch at import and look at their own copy afterwards: (module, attributes).
_SWITCHES = (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
             ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")))

_unreachable: str | None = None  # the endpoint that did not answer, once the probe has run and failed
_probed = False


def user_decided() -> bool:
    """Whether the user already said offline or not (huggingface_hub's own variables, set either way)."""
    return any(os.environ.get(name, "") != "" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(endpoint: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to `endpoint`'s host opens within `timeout` seconds."""
    url = urlsplit(endpoint)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except (OSError, ValueError):  # no such host, refused, timed out, no network
        return False


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
    if any(os.environ.get(proxy) for proxy in _PROXIES):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    if reachable(endpoint):
        return
    _unreachable = endpoint
    go_offline()
    if os.environ.get("RANK", "0") == "0":  # under a launch every process probes; the first one says so
        log.info("%s: the Hugging Face Hub (%s) did not answer within %.0f s; reading models and datasets from the "
                 "local cache only (set HF_HUB_OFFLINE=1 to skip this check)", name, endpoint, PROBE_SECONDS)


def unreachable_note() -> str:
    """A clause for an error about a Hub id, when the probe found the Hub unreachable; else ''."""
    return f"; the Hub ({_unreachable}) is not reachable from this machine, so only its local cache was read" \
        if _unreachable else ""
