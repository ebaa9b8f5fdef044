"""`benchmarks/profile_steps.py`'s per-step summary of a torch.profiler run."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, load_benchmark

torch = pytest.importorskip("torch")


def test_device_time_counts_each_kernel_once() -> None:
    from torch.autograd import DeviceType

    def event(key, device_type, cpu_us=0.0, device_us=0.0, count=1):
        return SimpleNamespace(key=key, device_type=device_type, self_cpu_time_total=cpu_us,
                               self_device_time_total=device_us, count=count)

    events = [event("aten::mm", DeviceType.CPU, cpu_us=300, device_us=8000),  # its kernel's time, again
              event("sm90_gemm_bf16", DeviceType.CUDA, device_us=8000),
              event("aten::add", DeviceType.CPU, cpu_us=100, device_us=2000),
              event("elementwise_kernel", DeviceType.CUDA, device_us=2000),
              event("cudaLaunchKernel", DeviceType.CPU, cpu_us=50, count=6)]
    profile = SimpleNamespace(key_averages=lambda: events)
    summary = load_benchmark("profile_steps").summarize(profile, steps=2, wall=0.02, device=torch.device("cuda"))
    assert summary["device_kernel_ms_per_step"] == 5.0 and summary["device_busy_share"] == 0.5
    assert summary["launches_per_step"] == 3.0 and summary["wall_ms_per_step"] == 10.0
    assert list(summary["top_device_ms_per_step"]) == ["aten::mm", "aten::add", "cudaLaunchKernel"]
    assert list(summary["top_kernels_ms_per_step"].items()) == [("sm90_gemm_bf16", 4.0), ("elementwise_kernel", 1.0)]
    assert summary["top_host_ms_per_step"]["aten::mm"] == 0.15


def test_a_real_cpu_profile_summarizes() -> None:
    a = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(3):
            a @ a
    summary = load_benchmark("profile_steps").summarize(profile, steps=3, wall=0.01, device=torch.device("cpu"))
    assert "aten::mm" in summary["top_host_ms_per_step"] and summary["device_kernel_ms_per_step"] is None


def test_host_reads_are_counted_by_call_site_and_put_back() -> None:
    bench = load_benchmark("profile_steps")
    original = torch.Tensor.item
    x = torch.ones(3)
    with bench.HostReads(torch.device("cpu")) as reads:
        for _ in range(4):
            x.sum().item()  # one read a time, here
        bool(x.all())
        x + 1  # no read
    assert torch.Tensor.item is original
    sites = reads.per_step(2)
    assert sum(sites.values()) == 2.5 and len(sites) == 2
    assert all(site.startswith("tests/test_profile_steps_benchmark.py:") for site in sites), sites


@pytest.mark.slow
def test_the_compiled_decoding_profiles_run_on_the_cpu(tmp_path) -> None:
    import json
    import subprocess

    from conftest import needs_compiler

    if needs_compiler.args[0]:
        pytest.skip(needs_compiler.kwargs["reason"])
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_steps.py"), "--cpu", "--parts",
                           "decode-compiled", "decode-compiled-step", "--sequences", "16", "--new-tokens", "24",
                           "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads(out.read_text())["decode-compiled"]
    assert compiled["ms_per_step"] > 0 and compiled["prompt_tokens"] % 64 == 0  # padded as the rollouts pad
    assert compiled["stop_check"] == "every step"  # a CPU: nothing to overlap
    assert compiled["profile_last_steps"]["steps"] == 6 and compiled["profile_last_steps"]["top_host_ms_per_step"]
    # compiled-step at the rollouts' shape: 2 prompts of 8 rows each, kept once a group and copied per row
    step = json.loads(out.read_text())["decode-compiled-step"]
    assert (step["rows"], step["groups"]) == (16, 2) and step["prompt_tokens"] % 64 == 0
    assert step["grouped"]["kv_bytes_per_step"] < step["copies"]["kv_bytes_per_step"]
    for way in ("grouped", "copies"):
        assert step[way]["steps"] == 24 and step[way]["ms_per_step"] > 0  # no stop token: every step runs
        assert step[way]["profile_call"]["steps"] == 24 and step[way]["profile_call"]["top_host_ms_per_step"]
    assert step["grouped_ratio"] > 0
