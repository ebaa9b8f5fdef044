"""The Hub probe: an unreachable Hub sends the process to the local cache at once, as HF_HUB_OFFLINE=1 does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, load_benchmark

from gsm8k_tr import hub

# A local port nothing listens on, and a model laid out in a Hugging Face cache: as `benchmarks/hub_offline.py` makes
# them for its two configurations.
BENCH = load_benchmark("hub_offline")
closed_port = BENCH.closed_port


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process that has not probed yet, not offline, without proxies; whatever the probe switches is undone."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "RANK", *hub._PROXIES):
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
    fresh.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    fresh.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # a direct connection says nothing behind a proxy
    hub.before_loading("org/model")
    assert "HF_HUB_OFFLINE" not in os.environ

    fresh.delenv("HTTPS_PROXY")
    fresh.setattr(hub, "_probed", False)
    for name, value in (("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "0")):  # the user decided: no probe
        fresh.setenv(name, value)
        hub.before_loading("org/model")
        assert not hub._probed and os.environ[name] == value
        fresh.delenv(name)


@pytest.mark.slow
def test_a_cached_hub_model_loads_without_the_hub(tmp_path, tiny_model_dir) -> None:
    """`evaluate` with a Hub id that is in the local cache, the Hub unreachable (a closed local port): the probe
    sends it to the cache; without it huggingface_hub retried each file with back-off (3 minutes here)."""
    BENCH.cached_hub_model(tmp_path / "hf", tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXIES)}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "gsm8k_tr", "evaluate", "--config", str(ROOT / "recipes" / "tiny.yaml"), "--model",
         "acme/tiny", f"output_dir={out}", "eval.limit=2", "eval.max_new_tokens=8"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "did not answer" in result.stderr and "Retry" not in result.stderr
    assert json.loads((out / "eval" / "tiny" / "metrics.json").read_text())["n"] == 2
