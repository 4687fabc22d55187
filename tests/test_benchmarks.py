"""The benchmark scripts run (in their tiny --smoke mode), so that they do not rot."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_smoke(script, tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", script), "--smoke", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_local_clustering_smoke(tmp_path):
    stdout, results = run_smoke("bench_local_clustering.py", tmp_path)
    assert "| case | impl |" in stdout
    rows = results["rows"]
    assert {r["op"] for r in rows} == {"affinity", "gather", "scatter"}
    assert {r["impl"] for r in rows} == {"ours", "loop", "unfold", "dense"}
    for r in rows:
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0
        assert "forward_backward_peak_bytes" in r
        if r["max_abs_error_vs_unfold"] is not None:
            assert r["max_abs_error_vs_unfold"] < 1e-4, r
    assert results["machine"]["copy_GBps"]["copy"] > 0


@pytest.mark.slow
def test_bench_model_smoke(tmp_path):
    stdout, results = run_smoke("bench_model.py", tmp_path)
    assert "## inference" in stdout and "## training step" in stdout
    assert [r["model"] for r in results["eval"]] == ["HCFormer R50 level 3"]
    assert [r["mode"] for r in results["train"]] == [
        "point decoding", "full decoding", "full decoding, previous primitive", "backbone alone",
        "point decoding, backbone checkpointing", "full decoding, backbone checkpointing",
        "point decoding, stem-res3 recomputed",
    ]
    for r in results["eval"] + results["train"]:
        assert r["peak_bytes"] > 0


@pytest.mark.slow
def test_bench_deform_conv_smoke(tmp_path):
    stdout, results = run_smoke("bench_deform_conv.py", tmp_path)
    assert "| shape | input |" in stdout
    assert [r["shape"] for r in results["rows"]] == [
        "res3 3x3", "res3 shortcut 1x1", "res4 3x3", "res4 shortcut 1x1", "res5 3x3", "res5 shortcut 1x1",
    ]
    for r in results["rows"]:
        for backend in ("torchvision", "sampled", "bag"):
            assert r[f"{backend}_forward_ms"] > 0 and r[f"{backend}_forward_backward_ms"] > 0
        assert r["sampled_max_rel_diff"] < 1e-4 and r["bag_max_rel_diff"] < 1e-4, r
