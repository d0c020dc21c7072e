"""Tests of the Mish paper experiments: paper.py end to end on a small slice, claims, CLI."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import data, depth, landscape, noise, paper, store, suite
from experiments.cli import Fault

ACTIVATIONS = ("relu", "mish")
# The quick protocols, smaller still: the tests check structure and sanity, not the paper.
TINY = {
  "depth": dataclasses.replace(
    depth.PROTOCOLS["quick"], depths=(4,), seeds=2, train_limit=1024, test_limit=500
  ),
  "noise": dataclasses.replace(
    noise.PROTOCOLS["quick"], sigmas=(0.0, 1.0, 8.0), train_limit=1024, test_limit=500
  ),
  "landscape": dataclasses.replace(landscape.PROTOCOLS["quick"], seeds=3, grid=100),
}


@pytest.fixture(scope="module")
def mnist() -> data.Dataset:
  try:
    return data.load("mnist", train_limit=1024)
  except data.DataError as err:
    pytest.skip(f"MNIST is not here: {err}")


@pytest.fixture(scope="module")
def paper_run(mnist, tmp_path_factory):
  """One `run_all` of the tiny protocols: (out, collated results)."""
  out = tmp_path_factory.mktemp("paper")
  collated = suite.run_all(
    {experiment: TINY[experiment.NAME] for experiment in paper.EXPERIMENTS},
    out,
    suite.Session(mnist, ACTIVATIONS, log=lambda line: None),
    command="test",
  )
  return out, collated


def test_run_all_writes_every_report_figure_and_result(paper_run):
  out, collated = paper_run
  assert store.read_json(out / "results.json", start_over="") == json.loads(json.dumps(collated))
  report = (out / "report.md").read_text()
  for name, figures in (
    ("depth", [depth.FIGURE]),
    ("noise", list(noise.FIGURES)),
    ("landscape", list(landscape.FIGURES)),
  ):
    for filename in ["results.json", "report.md", *figures]:
      assert (out / name / filename).stat().st_size > 0, (name, filename)
    for figure in figures:
      assert f"({name}/{figure})" in report
    e = collated["experiments"][name]
    assert e["protocol"]["name"] == "quick"
    assert e["claim"]["verdict"] in suite.VERDICTS
    assert e["claim"]["sentence"] in report
  # Published columns sit beside ours, and the reduced protocol says so.
  assert "| relu ours | relu paper |" in report
  assert "pending a GPU" in report


def test_depth_results_are_sane(paper_run):
  out, collated = paper_run
  results = store.read_json(out / "depth" / "results.json", start_over="")
  (entry,) = results["depths"]
  assert (entry["layers"], entry["dense_layers"]) == (4, 1)
  assert {(r["activation"], r["seed"]) for r in entry["runs"]} == {
    (a, s) for a in ACTIVATIONS for s in range(2)
  }
  # A shallow ReLU net learns from 8 plain-SGD steps: better than chance (10%).
  relu = [r["test_accuracy"] for r in entry["runs"] if r["activation"] == "relu"]
  assert min(relu) > 0.2, relu
  summary = collated["experiments"]["depth"]["summary"]
  assert summary["relu"]["4"]["n"] == 2
  assert summary["relu"]["4"]["mean"] == pytest.approx(100 * np.mean(relu))


def test_noise_at_sigma_0_is_the_clean_accuracy_and_noise_hurts(paper_run):
  out, _ = paper_run
  results = store.read_json(out / "noise" / "results.json", start_over="")
  assert len(results["runs"]) == 4
  for run in results["runs"]:
    assert run["sigmas"] == [0.0, 1.0, 8.0]
    assert run["accuracy"][0] == run["clean_test_accuracy"]
    assert run["loss"][0] == pytest.approx(run["clean_test_loss"], rel=1e-6)
    assert run["clean_test_accuracy"] > 0.5  # the CNN learns from 8 Adam steps
    assert run["accuracy"][2] < run["clean_test_accuracy"] - 0.2


def test_landscapes_differ_by_activation_and_are_scored(paper_run):
  out, _ = paper_run
  protocol = TINY["landscape"]
  relu, mish = (landscape.landscape(a, 0, protocol) for a in ACTIVATIONS)
  assert relu.shape == mish.shape == (100, 100)
  assert not np.allclose(relu, mish, atol=1e-3)
  results = store.read_json(out / "landscape" / "results.json", start_over="")
  for run in results["runs"]:
    if not run["constant"]:
      assert run["mean_gradient"] > 0 and run["mean_abs_laplacian"] > 0
  # The same seed's weights for every activation: the two networks differ only there.
  assert landscape.landscape("mish", 0, protocol) == pytest.approx(mish)


def test_roughness_of_known_images():
  n = 101
  y, x = np.mgrid[0:n, 0:n] / (n - 1)
  plane = landscape.roughness(x)
  assert plane["mean_gradient"] == pytest.approx(1.0)
  assert plane["mean_abs_laplacian"] == pytest.approx(0.0, abs=1e-9)
  kink = landscape.roughness(np.abs(x - 0.5) * 2)  # a V: the same slope, one sharp fold
  assert kink["mean_gradient"] == pytest.approx(2.0, rel=0.02)
  assert kink["mean_abs_laplacian"] > 1.0
  assert landscape.min_max(np.full((4, 4), 3.0)) is None


def _depth_results(accuracy: dict[tuple[int, str], list[float]]) -> dict:
  layers = sorted({d for d, _ in accuracy})
  activations = list(dict.fromkeys(a for _, a in accuracy))
  results = {
    "activations": activations,
    "depths": [
      {
        "layers": d,
        "runs": [
          {"activation": a, "seed": s, "test_accuracy": v}
          for a in activations
          for s, v in enumerate(accuracy[d, a])
        ],
      }
      for d in layers
    ],
  }
  results["summary"] = depth.summarize(results)
  return results


def test_depth_claim_follows_the_numbers():
  held = _depth_results(
    {
      (15, "relu"): [0.97, 0.975, 0.972],
      (25, "relu"): [0.30, 0.35, 0.28],
      (15, "mish"): [0.98, 0.981, 0.979],
      (25, "mish"): [0.95, 0.94, 0.955],
    }
  )
  verdict = depth.claim(held)
  assert verdict["verdict"] == "holds"
  assert "relu collapses" in verdict["sentence"]
  assert held["summary"]["mish"]["15"]["published"] == 98.4
  same = _depth_results(
    {
      (15, "relu"): [0.97, 0.975, 0.972],
      (25, "relu"): [0.96, 0.965, 0.962],
      (15, "mish"): [0.97, 0.975, 0.972],
      (25, "mish"): [0.961, 0.964, 0.963],
    }
  )
  assert depth.claim(same)["verdict"] == "does not hold"
  assert "none collapses" in depth.claim(same)["sentence"]
  only_mish = _depth_results({(15, "mish"): [0.9], (25, "mish"): [0.8]})
  assert depth.claim(only_mish)["verdict"] == "undetermined"


def test_noise_claim_follows_the_numbers():
  def results(mish: float, relu: float) -> dict:
    runs = [
      {"activation": a, "seed": s, "accuracy": [0.99, level + 0.01 * s], "loss": [0.05, 1 - level]}
      for a, level in (("relu", relu), ("mish", mish))
      for s in range(3)
    ]
    out = {"activations": ["relu", "mish"], "protocol": {"sigmas": [0.0, 3.0]}, "runs": runs}
    out["summary"] = noise.summarize(out)
    return out

  assert noise.claim(results(mish=0.8, relu=0.5))["verdict"] == "holds"
  assert noise.claim(results(mish=0.5, relu=0.8))["verdict"] == "does not hold"
  assert results(0.8, 0.5)["summary"]["mish"]["3"]["published"] == 78.8


def test_resume_with_other_settings_is_refused(tmp_path):
  protocol = dataclasses.replace(landscape.PROTOCOLS["quick"], seeds=1, grid=20)
  landscape.run(protocol, tmp_path, suite.Session(activations=ACTIVATIONS))
  with pytest.raises(Fault, match=r"other settings: protocol.seeds 1 \(now 2\)"):
    landscape.run(
      dataclasses.replace(protocol, seeds=2),
      tmp_path,
      suite.Session(activations=ACTIVATIONS, resume=True),
    )


# --------------------------------------------------------------------------------------------------
# The command line


def test_help_explains_the_protocols(capsys):
  with pytest.raises(SystemExit) as exit_info:
    paper.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for word in ("--quick", "--protocol", "--out", "--resume", "quick:", "cpu:", "full:", "sigma"):
    assert word in text


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--protocol", "huge"], "invalid choice"),
    (["--quick", "--protocol", "full"], "contradict"),
    (["--activations", "relu,nope"], "unknown activation 'nope'"),
    (["--only", "depth,sound"], "unknown experiment 'sound'"),
    (["--bogus"], "unrecognized arguments"),
  ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    paper.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err
  assert len(err.strip().splitlines()) == 1


def test_a_used_out_or_missing_data_exits_2(tmp_path, capsys):
  (tmp_path / "used").mkdir()
  (tmp_path / "used" / "results.json").write_text("{}")
  for argv, message in (
    (["--quick", "--out", str(tmp_path / "used")], "not empty"),
    (
      ["--quick", "--only", "depth", "--out", str(tmp_path / "new"), "--data-dir", str(tmp_path)],
      "experiments/data.py fetch",
    ),
  ):
    assert paper.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
