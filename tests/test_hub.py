"""The Hub probe: an unreachable Hub sends the process to the local cache at once, as HF_HUB_OFFLINE=1 does."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, load_benchmark

from gsm8k_tr import hub

# A local port nothing listens on, and a model laid out in a Hugging Face cache: as `benchmarks/hub_offline.py` makes
# them for its two configurations.
BENCH = load_benchmark("hub_offline")
closed_port = BENCH.closed_port


def proxy_variables() -> list[str]:
    """The environment's proxy settings, any case, NO_PROXY included."""
    return [name for name in os.environ if name.lower().endswith("_proxy")]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process that has not probed yet, not offline, without proxies; whatever the probe switches is undone."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "RANK", *proxy_variables()):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_probed", False)
    monkeypatch.setattr(hub, "_unreachable", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch  # its undo restores conftest's HF_HUB_OFFLINE=1, which the probe may set again directly


def test_reachable_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub.reachable(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not hub.reachable(f"http://127.0.0.1:{closed_port()}")
    assert not hub.reachable("https://127.0.0.1:port")  # a port that is no number: unreachable, not a traceback
    assert not hub.reachable("https://no-such-host.invalid")


def test_an_unreachable_hub_turns_the_process_offline_once(fresh: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with caplog.at_level("INFO", logger="gsm8k_tr.hub"):
        hub.before_loading("org/model")
        hub.before_loading("org/other")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.is_offline_mode()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["org/model"]  # said once
    assert "not reachable from this machine" in hub.unreachable_note()

    caplog.clear()  # under a launch, the other processes go offline without saying it again
    fresh.setattr(hub, "_probed", False)
    fresh.delenv("HF_HUB_OFFLINE")
    fresh.setenv("RANK", "1")
    with caplog.at_level("INFO", logger="gsm8k_tr.hub"):
        hub.before_loading("org/model")
    assert hub._probed and not caplog.records


def test_a_reachable_hub_a_proxy_or_offline_already_change_nothing(fresh: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.before_loading("org/model")
    assert "HF_HUB_OFFLINE" not in os.environ and not huggingface_hub.constants.is_offline_mode()
    assert hub.unreachable_note() == ""

    fresh.setattr(hub, "_probed", False)
    for name, value in (("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "0")):  # the user decided: no probe
        fresh.setenv(name, value)
        hub.before_loading("org/model")
        assert not hub._probed and os.environ[name] == value
        fresh.delenv(name)


class FakeProxy:
    """A local proxy that accepts connections and answers each request with `answer` (None: stays silent); it keeps
    what it was sent."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer, self.requests = answer, []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(1024)):
                    data += chunk
                self.requests.append(data.decode())
                if self.answer is not None:
                    conn.sendall(self.answer)
                else:
                    conn.recv(1)  # silent until the client gives up

    def __enter__(self) -> FakeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def test_the_proxy_is_the_one_the_hub_client_would_use(fresh: pytest.MonkeyPatch) -> None:
    assert hub.proxy_for("https://huggingface.co") is None
    fresh.setenv("HTTPS_PROXY", "proxy.example:3128")  # without a scheme: http, as httpx reads it
    fresh.setenv("ALL_PROXY", "socks5://socks.example:1080")
    assert hub.proxy_for("https://huggingface.co") == "http://proxy.example:3128"
    assert hub.proxy_for("http://mirror.example") == "socks5://socks.example:1080"  # no HTTP_PROXY: ALL_PROXY
    fresh.setenv("NO_PROXY", "localhost,.huggingface.co")
    assert hub.proxy_for("https://huggingface.co") is None and hub.proxy_for("https://hf-mirror.com") is not None
    assert hub.without_credentials("http://user:secret@proxy.example:3128") == "http://proxy.example:3128"


def test_a_proxy_is_asked_for_a_tunnel_to_the_hub() -> None:
    endpoint = "https://huggingface.co"
    dead = f"http://127.0.0.1:{closed_port()}"
    assert "did not answer" in hub.through_proxy(dead, endpoint)
    assert "did not answer" in hub.through_proxy(f"socks5://127.0.0.1:{closed_port()}", endpoint)
    with FakeProxy(b"HTTP/1.1 502 Bad Gateway\r\n\r\n") as proxy:
        secret = proxy.url.replace("http://", "http://us%20er:p%40ss@")
        why = hub.through_proxy(secret, endpoint)
        assert why == f"the proxy {proxy.url} answered 502 for it" and "p%40ss" not in why
        request = proxy.requests[0]
        assert request.startswith("CONNECT huggingface.co:443 HTTP/1.1\r\nHost: huggingface.co:443\r\n")
        assert f"Proxy-Authorization: Basic {base64.b64encode(b'us er:p@ss').decode()}" in request
        hub.through_proxy(proxy.url, "http://mirror.example")  # the port follows the endpoint's scheme or its URL
        hub.through_proxy(proxy.url, "https://[2001:db8::1]:8443")
        assert [r.split("\r\n")[0] for r in proxy.requests[1:]] == ["CONNECT mirror.example:80 HTTP/1.1",
                                                                       "CONNECT [2001:db8::1]:8443 HTTP/1.1"]
        assert hub.through_proxy(proxy.url, "https://mirror.example:port") is None and len(proxy.requests) == 3
        # a SOCKS proxy is not spoken to in HTTP: its listening port alone says it may reach the Hub
        assert hub.through_proxy(proxy.url.replace("http:", "socks5:"), endpoint) is None
    for answer in (b"HTTP/1.1 200 Connection established\r\n\r\n", b"HTTP/1.0 407 Proxy Authentication Required\r\n",
                   b"HTTP/1.1 403 Forbidden\r\n\r\n", b"not http\r\n", b""):
        with FakeProxy(answer) as proxy:  # any other answer, even none, may still reach the Hub: stay online
            assert hub.through_proxy(proxy.url, endpoint) is None, answer
    with FakeProxy(None) as proxy:
        assert hub.through_proxy(proxy.url, endpoint, timeout=0.3) is None


def test_behind_a_proxy_the_proxy_decides(fresh: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # direct: closed; through a proxy: unknown
    with FakeProxy(b"HTTP/1.1 200 Connection established\r\n\r\n") as proxy:
        fresh.setenv("HTTP_PROXY", proxy.url)
        hub.before_loading("org/model")
        assert "HF_HUB_OFFLINE" not in os.environ and len(proxy.requests) == 1

        fresh.setattr(hub, "_probed", False)  # NO_PROXY sends the Hub's host direct: the closed port decides
        fresh.setenv("NO_PROXY", "127.0.0.1")
        hub.before_loading("org/model")
        assert os.environ["HF_HUB_OFFLINE"] == "1" and len(proxy.requests) == 1
        assert "through the proxy" not in hub.unreachable_note()

    fresh.delenv("NO_PROXY")
    fresh.delenv("HF_HUB_OFFLINE")
    fresh.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fresh.setattr(hub, "_probed", False)
    fresh.setenv("HTTP_PROXY", f"http://user:secret@127.0.0.1:{closed_port()}")  # a dead proxy: offline at once
    caplog.clear()  # the direct probe above logs too where an earlier test left INFO on
    with caplog.at_level("INFO", logger="gsm8k_tr.hub"):
        hub.before_loading("org/model")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.is_offline_mode()
    said = caplog.records[0].getMessage()
    assert "is not reachable: the proxy http://127.0.0.1:" in said and "secret" not in said
    assert "through the proxy http://127.0.0.1:" in hub.unreachable_note() and "secret" not in hub.unreachable_note()


@pytest.mark.slow
def test_a_cached_hub_model_loads_without_the_hub(tmp_path, tiny_model_dir) -> None:
    """`evaluate` with a Hub id that is in the local cache, the Hub unreachable (a closed local port): the probe
    sends it to the cache; without it huggingface_hub retried each file with back-off (3 minutes here)."""
    BENCH.cached_hub_model(tmp_path / "hf", tiny_model_dir)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *proxy_variables())}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "gsm8k_tr", "evaluate", "--config", str(ROOT / "recipes" / "tiny.yaml"), "--model",
         "acme/tiny", f"output_dir={out}", "eval.limit=2", "eval.max_new_tokens=8"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "did not answer" in result.stderr and "Retry" not in result.stderr
    assert json.loads((out / "eval" / "tiny" / "metrics.json").read_text())["n"] == 2
