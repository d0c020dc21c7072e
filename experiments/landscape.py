"""Output landscape: how rough a randomly initialised MLP's output is over a 2-D grid.

The Mish paper's landscape figure: an MLP 2 -> 64 -> 32 -> 16 -> 1 (`models.mlp`) with the
activation after every layer, the output layer included, evaluated on a 400 x 400 grid over
[0, 10]^2 and min-max scaled to a [0, 1] image. As in the paper's reference code, every weight and
bias is drawn from PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); unlike it, the same
draw is used for every activation (a paired comparison) and the image is scaled as a whole (the
reference code's scikit-learn MinMaxScaler scales each column on its own).

Two numbers per image, with pixel differences taken in units of the image side:

* variation, the mean gradient magnitude |grad z|: how much the output varies (a plane rising
  from 0 to 1 across the image scores 1), whether smoothly or not;
* sharpness, the mean abs Laplacian |z(i+1,j) + z(i-1,j) + z(i,j+1) + z(i,j-1) - 4 z(i,j)| *
  (n - 1)^2: how sharply it bends. The kinks of a piecewise-linear (ReLU) surface concentrate it,
  and it grows with the grid's resolution there, while a smooth surface's stays bounded. This is
  the sharpness the claim is about, so the verdict uses it.

An output that is constant over the grid (a ReLU output layer that is negative everywhere) has no
image; such seeds are counted and left out of the means.

  python experiments/landscape.py --quick          # or --protocol cpu | full, as paper.py
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/landscape.py`: make `experiments.*` importable as with `-m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (report chooses the Agg backend)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import mish_jax  # noqa: E402
from experiments import models, report, stats, store, suite  # noqa: E402
from experiments.records import Comparison  # noqa: E402

NAME = "landscape"
NEEDS_DATA = False
CLAIM = (
  "A random network's output landscape has sharp transitions with ReLU but is smooth with Mish "
  "(and Swish)."
)
PUBLISHED = {"figure": "qualitative only: the paper shows the three images and gives no numbers"}
METRICS = {
  # Labels without "|": they go into Markdown tables.
  "mean_abs_laplacian": "sharpness: mean abs Laplacian",
  "mean_gradient": "variation: mean gradient magnitude",
}
SHOWN = 3  # seeds drawn in landscapes.png
FIGURES = {
  "landscapes.png": "The min-max scaled output images, one column per activation, one row per "
  "seed (the same weights across a row; the first seeds with no constant output)",
  "roughness.png": "The two roughness numbers, mean ± std over seeds",
}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One way to run the landscape test.

  Attributes:
    name: "quick", "cpu" or "full".
    seeds: random networks per activation (seeds 0..seeds-1), the same weights for each.
    grid: points per side of the grid.
    extent: the grid covers [0, extent]^2.
    hidden: the hidden layers' widths.
  """

  name: str
  seeds: int
  grid: int = 400
  extent: float = 10.0
  hidden: tuple[int, ...] = (64, 32, 16)

  def describe(self) -> str:
    """The protocol in one line, for reports and --help."""
    widths = " -> ".join(map(str, (2, *self.hidden, 1)))
    return (
      f"{self.seeds} random MLPs {widths} (activation after every layer), each on a "
      f"{self.grid} x {self.grid} grid over [0, {self.extent:g}]^2"
    )

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "description": self.describe()}


PROTOCOLS = {
  "quick": Protocol("quick", seeds=4),
  "cpu": Protocol("cpu", seeds=50),
  "full": Protocol("full", seeds=50),
}


def network(activation: str, seed: int, hidden: Sequence[int]) -> Callable[[jax.Array], jax.Array]:
  """The random MLP of `seed` with `activation` after every layer; its weights depend on `seed`
  only, not on the activation."""
  act = mish_jax.get_activation(activation)
  model = models.mlp(act, rngs=nnx.Rngs(seed), input_shape=(2,), num_classes=1, hidden=hidden)
  key = jax.random.key(seed)
  for i, layer in enumerate(layer for layer in model.layers if isinstance(layer, nnx.Linear)):
    # PyTorch's default nn.Linear init, as the paper's reference code used.
    bound = 1 / np.sqrt(layer.in_features)
    kernel_key, bias_key = jax.random.split(jax.random.fold_in(key, i))
    layer.kernel[...] = jax.random.uniform(
      kernel_key, layer.kernel.shape, minval=-bound, maxval=bound
    )
    layer.bias[...] = jax.random.uniform(bias_key, layer.bias.shape, minval=-bound, maxval=bound)
  return lambda x: act(model(x))


def landscape(activation: str, seed: int, protocol: Protocol) -> np.ndarray:
  """The raw (grid, grid) output: rows are y, columns x, both from 0 to `protocol.extent`."""
  axis = np.linspace(0.0, protocol.extent, protocol.grid, dtype=np.float32)
  x, y = np.meshgrid(axis, axis)
  points = jnp.asarray(np.stack([x.ravel(), y.ravel()], axis=-1))
  output = network(activation, seed, protocol.hidden)(points)
  return np.asarray(output, np.float64).reshape(protocol.grid, protocol.grid)


def min_max(image: np.ndarray) -> np.ndarray | None:
  """`image` scaled to [0, 1]; None when it is constant."""
  span = image.max() - image.min()
  return None if span <= 1e-9 * max(1.0, abs(image.max())) else (image - image.min()) / span


def roughness(image: np.ndarray) -> dict[str, float]:
  """Mean |gradient| and mean |Laplacian| of a [0, 1] image, in units of the image side."""
  side = image.shape[0] - 1
  dy, dx = np.gradient(image)
  laplacian = (
    image[2:, 1:-1] + image[:-2, 1:-1] + image[1:-1, 2:] + image[1:-1, :-2] - 4 * image[1:-1, 1:-1]
  )
  return {
    "mean_gradient": float(np.hypot(dx, dy).mean() * side),
    "mean_abs_laplacian": float(np.abs(laplacian).mean() * side**2),
  }


def run(protocol: Protocol, out: Path, session: suite.Session) -> dict[str, Any]:
  """Draws every (seed, activation) landscape; writes results.json, report.md and the figures.

  It takes a few minutes at most; a resumed run keeps the stored numbers and only redraws the
  figures.

  Args:
    protocol: what to run.
    out: the output folder (created).
    session: the activations and options (no data: the inputs are a grid).

  Returns:
    The results (as in results.json).

  Raises:
    cli.Fault: `session.resume` of a run made with another protocol or activations, or of
      damaged results.
  """
  out.mkdir(parents=True, exist_ok=True)
  activations = session.activations
  expected = suite.expected(protocol, session)
  path = out / "results.json"
  stored = store.read_matching(path, expected) if session.resume and path.exists() else None
  runs = list(stored["runs"]) if stored else []
  done = {(r["activation"], r["seed"]) for r in runs}
  bar = suite.progress_bar(protocol.seeds * len(activations), NAME, session.progress)
  for seed in range(protocol.seeds):
    for activation in activations:
      bar.update()
      if (activation, seed) in done:
        continue
      raw = landscape(activation, seed, protocol)
      image = min_max(raw)
      runs.append(
        {
          "activation": activation,
          "seed": seed,
          "constant": image is None,
          "raw_min": float(raw.min()),
          "raw_max": float(raw.max()),
          **({} if image is None else roughness(image)),
        }
      )
  bar.close()
  results: dict[str, Any] = {
    "experiment": NAME,
    **expected,
    "metadata": stored["metadata"]
    if stored
    else report.environment("experiments/landscape.py", protocol.to_json()),
    "published": PUBLISHED,
    "metrics": METRICS,
    "runs": runs,
  }
  results["summary"] = summarize(results)
  results["claim"] = claim(results)
  store.write_json(path, results)
  write_report(results, out)
  plot_images(results, protocol, out / "landscapes.png")
  plot_roughness(results, out / "roughness.png")
  return results


def _values(results: Mapping[str, Any], activation: str, metric: str) -> list[float]:
  return [r[metric] for r in results["runs"] if r["activation"] == activation and not r["constant"]]


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
  """Per activation: each metric's mean and std over the non-constant seeds, and the count."""
  summary = {}
  for activation in results["activations"]:
    runs = [r for r in results["runs"] if r["activation"] == activation]
    entry: dict[str, Any] = {"seeds": len(runs), "constant": sum(r["constant"] for r in runs)}
    for metric in METRICS:
      values = np.asarray(_values(results, activation, metric))
      entry[metric] = {
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
      }
    summary[activation] = entry
  return summary


def _paired(results: Mapping[str, Any], a: str, b: str, metric: str) -> Comparison:
  """Paired t-test of `metric`, a vs b, over the seeds where both images are non-constant."""
  by_seed = {(r["activation"], r["seed"]): r[metric] for r in results["runs"] if not r["constant"]}
  seeds = sorted({s for (_, s) in by_seed if (a, s) in by_seed and (b, s) in by_seed})
  return stats.compare_paired([by_seed[a, s] for s in seeds], [by_seed[b, s] for s in seeds])


def claim(results: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict on `CLAIM`, from the numbers.

  It holds when ReLU's images are significantly sharper (mean |Laplacian|; paired t-test over
  seeds, p < 0.05) than Mish's, and does not hold otherwise; the gradient magnitude and Swish are
  reported beside it.
  """
  activations = results["activations"]
  if "relu" not in activations or "mish" not in activations:
    return {"claim": CLAIM, "verdict": "undetermined", "sentence": "It needs relu and mish."}
  summary = results["summary"]
  sharp = {o: _paired(results, "relu", o, "mean_abs_laplacian") for o in activations if o != "relu"}
  grad = _paired(results, "relu", "mish", "mean_gradient")
  test = sharp["mish"]
  if test.p_value is None:
    return {
      "claim": CLAIM,
      "verdict": "undetermined",
      "sentence": f"Too few seeds where both relu and mish give a non-constant image "
      f"({test.pairs}).",
    }
  verdict = "holds" if test.significant and test.diff > 0 else "does not hold"

  def value(activation: str, metric: str) -> str:
    entry = summary[activation][metric]
    std = "" if entry["std"] is None else f" ± {entry['std']:.2f}"
    return f"{entry['mean']:.2f}{std}"

  sentence = (
    "Sharpness (mean abs Laplacian of the scaled image): "
    + ", ".join(f"{a} {value(a, 'mean_abs_laplacian')}" for a in activations)
    + f"; relu is sharper than mish in {test.a_higher} of {test.pairs} paired seeds "
    f"(paired t-test p = {test.p_value:.2g}). "
    + (
      "Variation (mean gradient magnitude): "
      + ", ".join(f"{a} {value(a, 'mean_gradient')}" for a in activations)
      + (f" (relu vs mish p = {grad.p_value:.2g})." if grad.p_value is not None else ".")
    )
    + (
      f" {summary['relu']['constant']} of {summary['relu']['seeds']} relu outputs were constant "
      "(dead output unit) and are left out."
      if summary["relu"]["constant"]
      else ""
    )
  )
  return {
    "claim": CLAIM,
    "verdict": verdict,
    "sentence": sentence,
    "sharpness_vs_relu": {name: test.to_json() for name, test in sharp.items()},
    "gradient_relu_vs_mish": grad.to_json(),
  }


def section(results: Mapping[str, Any], link_prefix: str = "") -> list[str]:
  """The report's section: protocol, the roughness table, the verdict and the figures."""
  protocol, summary = results["protocol"], results["summary"]
  rows = []
  for activation, entry in summary.items():
    row = [activation]
    for metric in METRICS:
      mean, std = entry[metric]["mean"], entry[metric]["std"]
      row.append(
        "n/a" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
      )
    row.append(f"{entry['constant']} of {entry['seeds']}")
    rows.append(row)
  return [
    "## Output landscape: roughness of a random MLP's output",
    "",
    f"Protocol **{protocol['name']}**: {protocol['description']}; weights and biases "
    "U(±1/sqrt(fan_in)) (PyTorch's default, as the paper's code), the same per seed for every "
    "activation; each image min-max scaled to [0, 1].",
    "",
    report.markdown_table(
      ["activation", *METRICS.values(), "constant outputs (left out)"],
      rows,
    ),
    "",
    "Mean ± std over the seeds with a non-constant output. Differences are per image side: "
    "a plane rising 0 -> 1 across the image has gradient magnitude 1 and Laplacian 0; kinks "
    f"raise the mean abs Laplacian. Paper: {PUBLISHED['figure']}.",
    "",
    f"Claim: {results['claim']['claim']} Verdict: **{results['claim']['verdict']}**. "
    f"{results['claim']['sentence']}",
    "",
    *[f"![{title}]({link_prefix}{name})\n" for name, title in FIGURES.items()],
  ]


def write_report(results: Mapping[str, Any], out: Path) -> None:
  """report.md: the section, then every run and the environment."""
  meta = results["metadata"]
  lines = [
    "# Output landscape (the Mish paper's smoothness figure)",
    "",
    report.describe_environment(meta),
    "",
    *section(results),
    "",
    "## Every seed",
    "",
    report.markdown_table(
      ["seed", "activation", "raw output range", *METRICS.values()],
      [
        [
          r["seed"],
          r["activation"],
          f"[{r['raw_min']:.3g}, {r['raw_max']:.3g}]",
          *(("constant",) * len(METRICS) if r["constant"] else (f"{r[m]:.3f}" for m in METRICS)),
        ]
        for r in results["runs"]
      ],
    ),
    "",
  ]
  (out / "report.md").write_text("\n".join(lines))


def plot_images(results: Mapping[str, Any], protocol: Protocol, path: Path) -> None:
  """The first `SHOWN` seeds whose outputs are all non-constant (else the first seeds), redrawn:
  one row per seed, one column per activation, each titled with its two numbers."""
  activations = results["activations"]
  metrics = {(r["activation"], r["seed"]): r for r in results["runs"]}
  seeds = sorted({seed for _, seed in metrics})
  alive = [s for s in seeds if not any(metrics[a, s]["constant"] for a in activations)]
  shown = [
    (seed, {a: min_max(landscape(a, seed, protocol)) for a in activations})
    for seed in (alive or seeds)[:SHOWN]
  ]
  extent = protocol.extent
  fig, axes = plt.subplots(
    len(shown), len(activations), figsize=(3.2 * len(activations), 3.2 * len(shown)), squeeze=False
  )
  for row, (seed, images) in zip(axes, shown, strict=True):
    for ax, activation in zip(row, activations, strict=True):
      image = images[activation]
      if image is None:
        ax.text(0.5, 0.5, "constant output", ha="center", va="center", transform=ax.transAxes)
        title = f"{activation}, seed {seed}"
      else:
        ax.imshow(image, origin="lower", cmap="viridis", extent=(0, extent, 0, extent))
        r = metrics[activation, seed]
        title = (
          f"{activation}, seed {seed}\nsharpness {r['mean_abs_laplacian']:.2f}, "
          f"variation {r['mean_gradient']:.2f}"
        )
      ax.set_title(title, fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  report.save_figure(fig, path, dpi=100)


def plot_roughness(results: Mapping[str, Any], path: Path) -> None:
  """Bars of each metric per activation, mean ± std over non-constant seeds."""
  summary = results["summary"]
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 3.6))
  for ax, (metric, title) in zip(axes, METRICS.items(), strict=True):
    names = [a for a in summary if summary[a][metric]["mean"] is not None]
    ax.bar(
      names,
      [summary[a][metric]["mean"] for a in names],
      yerr=[summary[a][metric]["std"] or 0.0 for a in names],
      capsize=4,
      color=[f"C{i}" for i in range(len(names))],
    )
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle(f"Output landscape roughness (protocol {results['protocol']['name']})")
  report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line of this experiment alone (`paper.py`'s, without --only)."""
  return suite.main(argv, (sys.modules[__name__],), prog="python experiments/landscape.py")


if __name__ == "__main__":
  sys.exit(main())
