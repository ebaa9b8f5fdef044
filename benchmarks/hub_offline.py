"""Evaluating with a Hub model that is in the local cache, on a machine whose Hub does not answer: with the probe
of `gsm8k_tr/hub.py` against without it, in one run.

    python benchmarks/hub_offline.py            # the tiny model, 2 questions of 8 tokens

Both configurations put the tiny model into a fresh Hugging Face cache as the Hub id `acme/tiny` and point
`HF_ENDPOINT` at a local port nothing listens on. (a) without the probe: a proxy is set (a dead one, the same closed
port), which the probe leaves alone since a direct connection says nothing behind a proxy, so huggingface_hub asks
the Hub for every file and retries with back-off before it reads the cache, as every Hub load did before the probe.
(b) with it: no proxy; the first load finds the Hub silent and reads the cache at once. Prints each one's wall
time, the retry messages it printed, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cached_hub_model(home: Path, model: Path) -> None:
    """`model`'s files as the Hub id `acme/tiny` at one commit, the layout huggingface_hub's cache has."""
    snapshot = home / "hub" / "models--acme--tiny" / "snapshots" / COMMIT
    shutil.copytree(model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)


def one(work: Path, proxy: bool, timeout: int) -> dict:
    """One `evaluate` in a fresh process and cache; its wall time and retry messages."""
    home = work / "hf"
    from gsm8k_tr import builtin

    cached_hub_model(home, Path(builtin.resolve("builtin:tiny-gpt2")))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                        "http_proxy", "ALL_PROXY", "all_proxy")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint)
    if proxy:
        env.update(HTTP_PROXY=endpoint, HTTPS_PROXY=endpoint)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gsm8k_tr", "evaluate", "--config", str(ROOT / "recipes" / "tiny.yaml"), "--model",
         "acme/tiny", f"output_dir={work / 'run'}", "eval.limit=2", "eval.max_new_tokens=8"],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=work)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed ({'without' if proxy else 'with'} the probe): {result.stderr[-800:]}")
    return {"seconds": round(seconds, 1), "retry_messages": result.stderr.count("Retry")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=900, help="seconds each evaluation may take")
    args = parser.parse_args()
    results = {}
    for name, proxy in (("(a) without the probe", True), ("(b) with the probe", False)):
        with tempfile.TemporaryDirectory() as work:
            results[name] = one(Path(work), proxy, args.timeout)
        print(f"{name}: {results[name]['seconds']} s, {results[name]['retry_messages']} retry messages", flush=True)
    a, b = (r["seconds"] for r in results.values())
    print(f"ratio (a)/(b): {a / b:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
