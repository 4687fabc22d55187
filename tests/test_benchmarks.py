"""The benchmark scripts run (in their tiny --smoke mode), so that they do not rot."""
import json
import os
import subprocess
import sys

import pytest
import torch

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
    assert {r["impl"] for r in rows} == {"blocked", "unfold", "loop", "dense"}
    for r in rows:
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0
        assert "forward_backward_peak_bytes" in r
        if r["max_abs_error_vs_loop"] is not None:
            assert r["max_abs_error_vs_loop"] < 1e-4, r
    assert results["machine"]["copy_GBps"]["copy"] > 0


@pytest.mark.slow
def test_bench_model_smoke(tmp_path):
    stdout, results = run_smoke("bench_model.py", tmp_path)
    assert "## inference" in stdout and "## training step" in stdout
    assert [r["model"] for r in results["eval"]] == ["HCFormer R50 level 3"]
    assert [r["mode"] for r in results["train"]] == [
        "point decoding", "full decoding", "full decoding, previous primitive",
        "point decoding, blocked primitive", "point decoding, unfold primitive",
        "full decoding, blocked primitive", "full decoding, unfold primitive", "backbone alone",
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


def test_compare_outputs_reports_differences_and_the_speed_ratio():
    """benchmarks/original/compare_outputs.py's report, on hand-made results of both sides (the
    original's checkout it runs is not shipped)."""
    from tiny_configs import load_script

    script = load_script("benchmarks/original/compare_outputs.py")
    sem_seg = torch.zeros(3, 4, 5)
    sem_seg[1] = 1.0
    ours = {"layout": {"a": [2], "b": [3]}, "sem_seg": sem_seg.clone(),
            "instances": {"scores": torch.tensor([0.5, 0.25]), "classes": torch.tensor([1, 2]),
                          "areas": torch.tensor([10, 4])}}
    theirs = {"layout": {"a": [2], "b": [4], "c": [1]}, "sem_seg": sem_seg.clone(),
              "instances": {"scores": torch.tensor([0.5, 0.375]), "classes": torch.tensor([1, 2]),
                            "areas": torch.tensor([10, 5])}}
    theirs["sem_seg"][2, 0, 0] = 2.0  # one pixel's argmax differs, by 2.0
    report = script.compare(theirs, ours)
    assert report["missing"] == ["c"] and report["unexpected"] == [] and report["shape_mismatch"] == ["b"]
    assert report["sem_seg_max_abs_diff"] == 2.0 and report["sem_seg_argmax_pixels_differing"] == 1
    assert report["instances"] == {"count": [2, 2], "score_max_abs_diff": 0.125, "classes_equal": True,
                                   "areas_equal": False}

    runs = {"original": [{"seconds": [0.3, 0.1, 0.2], "peak_mib": 10.0}, {"seconds": [0.4], "peak_mib": 12.0}],
            "ours": [{"seconds": [0.1, 0.05], "peak_mib": 9.0}, {"seconds": [0.1], "peak_mib": 8.0}]}
    timing = script.timing_report(runs)
    assert timing["median_ms"] == {"original": 250.0, "ours": 100.0}  # medians over all children's runs
    assert timing["original_over_ours"] == 2.5
    assert timing["peak_mib"] == {"original": 12, "ours": 9}
    training = script.timing_report({"original": [{"seconds": [2.0], "first_loss": 3.14159}],
                                     "ours": [{"seconds": [1.0], "first_loss": 3.0}]})
    assert training == {"median_ms": {"original": 2000.0, "ours": 1000.0}, "original_over_ours": 2.0,
                        "first_loss": {"original": [3.142], "ours": [3.0]}}
    assert script.parse_size("800x1216") == (800, 1216)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_a_machine_without_cuda(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", script], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh OUTDIR" in done.stderr
    done = subprocess.run(["bash", script, str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "sees no CUDA device" in done.stderr
    assert not (tmp_path / "out").exists()
