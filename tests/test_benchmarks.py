"""Tests of the benchmark runner, `benchmarks/run.py`: its --quick run's outputs and its flags.

No timing is asserted: only that every section runs, passes its correctness checks and writes a
results.json, a report.md and PNG plots of the documented structure.
"""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from benchmarks import run

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("elementwise_throughput.png", "fused_roofline.png", "training_ratios.png", "memory.png")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
  """One --quick run of every section, in-process; its exit status and output folder."""
  out = tmp_path_factory.mktemp("bench") / "out"
  # --system-malloc: leave the pytest process's allocator as it is.
  return run.main(["--quick", "--system-malloc", "--out", str(out)]), out


def test_quick_run_passes_every_check(quick_run):
  status, out = quick_run
  results = json.loads((out / "results.json").read_text())
  assert results["errors"] == []
  assert results["failed_checks"] == []
  assert status == 0


def test_results_json_structure(quick_run):
  _, out = quick_run
  results = json.loads((out / "results.json").read_text())
  env = results["environment"]
  assert {"date", "command", "device", "cpu", "versions", "load_average_start"} <= env.keys()
  assert {"platform", "device_kind"} <= env["device"].keys()
  assert {"jax", "jaxlib", "flax", "optax"} <= env["versions"].keys()
  assert "--quick" in env["command"]
  assert results["mode"] == "quick"
  assert results["sections"] == list(run.SECTIONS)

  elementwise = results["elementwise"]
  assert elementwise["copy"] and all(c["gb_per_s"] > 0 for c in elementwise["copy"])
  records = elementwise["records"]
  assert {r["implementation"] for r in records} >= {
    "jax.nn.relu",
    "jax.nn.silu",
    "jax.nn.mish",
    "mish_jax.mish (xla)",
  }
  assert {(r["dtype"], r["direction"]) for r in records} == {
    (dtype, direction)
    for dtype in ("float32", "bfloat16")
    for direction in ("forward", "forward+backward")
  }
  for record in records:
    assert {"ms", "gb_per_s", "pct_of_copy", "speedup_vs_jax_nn_mish", "time_vs_silu"} <= (
      record.keys()
    )
    assert record["ms"] > 0 and record["check"]["ok"]
  assert elementwise["pallas"]["checks"] or elementwise["pallas"]["timed"]

  fused = results["fused"]
  assert fused["baselines"]
  for record in fused["records"]:
    assert {"ms", "tflops", "roofline_tflops", "pct_of_roofline", "check"} <= record.keys()
  assert fused["pallas"]["checks"] or fused["pallas"]["timed"]

  training = {r["activation"]: r for r in results["training"]["records"]}
  assert list(training) == ["relu", "swish", "jax_mish", "mish", "mish_pallas"]
  assert training["relu"]["ratio_vs_relu"] == pytest.approx(1.0)
  assert all(r["ms"] > 0 for r in training.values() if "skipped" not in r)

  memory = {r["activation"]: r for r in results["memory"]["records"]}
  assert list(memory) == ["relu", "swish", "jax_mish", "mish", "jax.checkpoint(mish)"]
  for record in memory.values():
    assert record["memory"]["temp_size_in_bytes"] >= 0
    assert {"temp_mib", "temp_vs_relu", "ms", "time_vs_relu"} <= record.keys()

  assert [row["metric"] for row in results["headline"]]
  assert all(isinstance(row["met"], bool) for row in results["headline"])


def test_report_sections(quick_run):
  _, out = quick_run
  report = (out / "report.md").read_text()
  for heading in (
    "# mish-jax benchmarks",
    "## Headline",
    "## 1. Elementwise",
    "## 2. Fused dense",
    "## 3. Training cost",
    "## 4. Memory",
    "## Correctness",
  ):
    assert f"\n{heading}" in f"\n{report}", heading
  assert "| size | implementation | ms | GB/s | % of copy |" in report
  results = json.loads((out / "results.json").read_text())
  if not results["elementwise"]["pallas"]["timed"]:
    assert "interpret mode" in report
  for plot in PLOTS:
    assert f"]({plot})" in report


@pytest.mark.parametrize("name", PLOTS)
def test_plots_are_valid_pngs(quick_run, name):
  _, out = quick_run
  path = out / name
  assert path.read_bytes().startswith(PNG_SIGNATURE)
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--sections", "elementwise,nope"], "unknown section 'nope'"),
    (["--sections", ","], "unknown section (none given)"),
  ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err
  assert err.count("\n") == 1 and err.startswith("python benchmarks/run.py: error:")


def test_refuses_a_non_empty_out(tmp_path, capsys):
  (tmp_path / "results.json").write_text("{}")
  assert run.main(["--quick", "--out", str(tmp_path)]) == 2
  assert "is not empty: choose another" in capsys.readouterr().err


def test_help_runs_as_a_script():
  result = subprocess.run(
    [sys.executable, "benchmarks/run.py", "--help"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  for flag in ("--quick", "--out", "--sections", "--system-malloc"):
    assert flag in result.stdout
