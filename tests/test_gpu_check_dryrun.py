"""The GPU check's plumbing, on the CPU: scripts/gpu_check.sh with GPU_CHECK_DRY_RUN=1
fakes every step (no nvcc, torch build or GPU) but runs the real sequencing, limits,
logs, statuses, summary.txt and archive. The device tool brings back at most 8 files,
no more than 2 folders down, and gives one command 10 minutes; these tests hold the
script to that."""

import os
import re
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

CALL_1 = ["build", "test", "bench-gpu", "bench-gpu-persistent", "memcheck-step", "memcheck-persistent"]
CALL_2 = ["build", "racecheck-step", "racecheck-persistent", "synccheck-step", "synccheck-persistent"]
EVERY_STEP = CALL_1 + CALL_2[1:] + ["cmake"]
# The device tool's per-command limit is 600 s; the runbook calls with timeout_s=540.
RUN_TIMEOUT_S = 540


def dry_run(out: Path, **knobs: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_CHECK_", "TIMEOUT_", "BENCH_", "GPU_BENCH_", "GPU_TEST_"))
           and k not in ("OUT", "PYTEST_ARGS", "SANITIZER_ARGS")}
    env.update(OUT=str(out), GPU_CHECK_DRY_RUN="1", **knobs)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def step_lines(summary: str) -> dict[str, tuple[str, int]]:
    """step name -> (status, limit in seconds) from summary.txt's step lines."""
    found = {}
    for line in summary.splitlines():
        m = re.match(r"^(\S+)\s+(PASS|FAIL \(exit \d+\)|TIMEOUT after \d+s|UNAVAILABLE \(.*?\)"
                     r"|SKIPPED \(.*?\))\s+\d+s\s+\(predicted \d+s, limit (\d+)s\)$", line)
        if m:
            found[m.group(1)] = (m.group(2), int(m.group(3)))
    return found


def out_layout(out: Path) -> tuple[list[Path], int]:
    """Files under out, and the deepest folder level a file sits in (0: out itself)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    depth = max((len(p.relative_to(out).parts) - 1 for p in files), default=0)
    return files, depth


def archive_names(out: Path) -> set[str]:
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {n.removeprefix("./") for n in tar.getnames()}


def log_text(out: Path, name: str) -> str:
    with tarfile.open(out / "logs.tar.gz") as tar:
        return tar.extractfile("./" + name).read().decode()


def test_default_call_passes_with_every_step_listed_and_fits_the_device_limits(tmp_path):
    result = dry_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "DRY RUN" in summary
    steps = step_lines(summary)
    assert list(steps) == EVERY_STEP, summary
    for name in CALL_1:
        assert steps[name][0] == "PASS", summary
    for name in set(EVERY_STEP) - set(CALL_1):
        assert steps[name][0] == "SKIPPED (not in GPU_CHECK_STEPS)", summary
    assert summary.rstrip().endswith("overall: PASS")
    # The step limits of one call, with the 30 s machine probe, end inside run's timeout_s.
    assert sum(steps[n][1] for n in CALL_1) + 30 <= 500 < RUN_TIMEOUT_S

    # $OUT: summary.txt and one archive, nothing else, within the tool's 8 files / 2 folders.
    files, depth = out_layout(tmp_path)
    assert sorted(p.name for p in files) == ["logs.tar.gz", "summary.txt"]
    assert len(files) <= 8 and depth <= 2
    names = archive_names(tmp_path)
    for log in ["build.log", "test.log", "bench-gpu.log", "bench-gpu-persistent.log",
                "memcheck-step.log", "memcheck-persistent.log", "build_info.txt", "summary.txt",
                "bench-gpu/results.json", "bench-gpu/results.md",
                "bench-gpu-persistent/results.json"]:
        assert log in names, sorted(names)

    # Each fake saw the real command line.
    test_cmd = log_text(tmp_path, "test.log")
    assert "-m pytest tests/test_cuda.py tests/test_cuda_persistent.py" in test_cmd
    assert "test_cuda_compile.py" not in test_cmd
    bench_cmd = log_text(tmp_path, "bench-gpu.log")
    assert "-m rnnfast.bench --set gpu --device cuda --cell all" in bench_cmd
    assert "--repeats 2 --max-repeats 3 --budget 0 --warmup 1" in bench_cmd
    memcheck_cmd = log_text(tmp_path, "memcheck-persistent.log")
    assert "--tool memcheck" in memcheck_cmd
    assert "scripts/sanitizer_case.py --path persistent" in memcheck_cmd
    assert "TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16" in summary


def test_failed_build_skips_the_rest_and_fails(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_DRY_FAIL="build")
    assert result.returncode == 1, result.stdout + result.stderr
    steps = step_lines((tmp_path / "summary.txt").read_text())
    assert steps["build"][0] == "FAIL (exit 1)"
    for name in CALL_1[1:]:
        assert steps[name][0] == "SKIPPED (build did not pass)"
    assert "build.log" in archive_names(tmp_path)


def test_timeout_failure_and_unsupported_sanitizer_are_reported_per_step(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_DRY_SLOW="test", TIMEOUT_TEST="1",
                     GPU_CHECK_DRY_FAIL="bench-gpu", GPU_CHECK_DRY_NOSAN="memcheck-step")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (tmp_path / "summary.txt").read_text()
    steps = step_lines(summary)
    assert steps["test"] == ("TIMEOUT after 1s", 1)
    assert steps["bench-gpu"][0] == "FAIL (exit 1)"
    assert steps["bench-gpu-persistent"][0] == "PASS"
    assert steps["memcheck-step"][0] == "UNAVAILABLE (compute-sanitizer: Device not supported)"
    assert steps["memcheck-persistent"][0] == "PASS"
    assert summary.rstrip().endswith("overall: FAIL")
    # The timed-out step's log still made it into the archive.
    assert "test.log" in archive_names(tmp_path)
    files, depth = out_layout(tmp_path)
    assert len(files) == 2 and depth == 0


def test_unavailable_sanitizer_alone_is_incomplete_not_pass(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_DRY_NOSAN="memcheck-step,memcheck-persistent")
    assert result.returncode == 2, result.stdout + result.stderr
    assert (tmp_path / "summary.txt").read_text().rstrip().endswith("overall: INCOMPLETE")


def test_second_call_runs_racecheck_and_synccheck_and_total_limit_skips_late_steps(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_CALL="2")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = step_lines((tmp_path / "summary.txt").read_text())
    assert [n for n, (status, _) in steps.items() if status == "PASS"] == CALL_2
    assert sum(steps[n][1] for n in CALL_2) + 30 <= 500
    race_cmd = log_text(tmp_path, "racecheck-step.log")
    assert "--tool racecheck" in race_cmd and "--path step" in race_cmd

    # A step that would outlast TIMEOUT_TOTAL is cut to what is left; later ones are skipped.
    # The script keeps 5 s in reserve and skips a step with under 5 s left, so the total
    # leaves room for the script's own start on a loaded machine (10 s did not, in CI).
    out2 = tmp_path / "short"
    result = dry_run(out2, GPU_CHECK_STEPS=",".join(CALL_2[1:]), TIMEOUT_TOTAL="20",
                     GPU_CHECK_DRY_SLOW="racecheck-step")
    assert result.returncode == 1, result.stdout + result.stderr
    steps = step_lines((out2 / "summary.txt").read_text())
    assert steps["racecheck-step"][0].startswith("TIMEOUT"), steps
    assert 5 <= steps["racecheck-step"][1] <= 20 - 5
    for name in CALL_2[2:]:
        assert steps[name][0].startswith("SKIPPED (no time left")


def test_steps_knob_groups_and_rejects_unknown_names(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_STEPS="build,bench")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = step_lines((tmp_path / "summary.txt").read_text())
    assert [n for n, (status, _) in steps.items() if status == "PASS"] == \
        ["build", "bench-gpu", "bench-gpu-persistent"]
    bad = dry_run(tmp_path / "bad", GPU_CHECK_STEPS="build,bogus")
    assert bad.returncode == 2 and "unknown step 'bogus'" in bad.stderr


def test_bad_call_number_is_refused(tmp_path):
    result = dry_run(tmp_path, GPU_CHECK_CALL="3")
    assert result.returncode == 2 and "GPU_CHECK_CALL must be 1 or 2" in result.stderr
