"""Evaluating with a Hub model that is in the local cache, on a machine whose Hub does not answer: with the probe
of `gsm8k_tr/hub.py` against without it, in one run.

    python benchmarks/hub_offline.py            # the tiny model, 2 questions of 8 tokens

Every configuration puts the tiny model into a fresh Hugging Face cache as the Hub id `acme/tiny` and points
`HF_ENDPOINT` at a local port nothing listens on. (a) without the probe: `HF_HUB_OFFLINE=0` (the user's own choice,
which the probe respects), so huggingface_hub asks the Hub for every file and retries with back-off before it reads
the cache, as every Hub load did before the probe. (b) with it: the first load finds the Hub silent and reads the
cache at once. (c) with it, behind a dead proxy (`HTTP_PROXY` and `HTTPS_PROXY` at another closed port): the probe
asks the proxy, which does not answer. Prints each one's wall time, the retry messages it printed, and (a)'s time
over each of the others.
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


def one(work: Path, setting: dict[str, str], timeout: int) -> dict:
    """One `evaluate` in a fresh process and cache, with `setting` added to the environment; its wall time and retry
    messages."""
    home = work / "hf"
    from gsm8k_tr import builtin

    cached_hub_model(home, Path(builtin.resolve("builtin:tiny-gpt2")))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.lower().endswith("_proxy")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, **setting)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gsm8k_tr", "evaluate", "--config", str(ROOT / "recipes" / "tiny.yaml"), "--model",
         "acme/tiny", f"output_dir={work / 'run'}", "eval.limit=2", "eval.max_new_tokens=8"],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=work)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed with {setting}: {result.stderr[-800:]}")
    return {"seconds": round(seconds, 1), "retry_messages": result.stderr.count("Retry")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=900, help="seconds each evaluation may take")
    args = parser.parse_args()
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    configurations = {"(a) without the probe": {"HF_HUB_OFFLINE": "0"}, "(b) with the probe": {},
                      "(c) with the probe, behind a dead proxy": {"HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy}}
    results = {}
    for name, setting in configurations.items():
        with tempfile.TemporaryDirectory() as work:
            results[name] = one(Path(work), setting, args.timeout)
        print(f"{name}: {results[name]['seconds']} s, {results[name]['retry_messages']} retry messages", flush=True)
    a, b, c = (r["seconds"] for r in results.values())
    print(f"ratio (a)/(b): {a / b:.1f}x; (a)/(c): {a / c:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
