"""The Mish paper's small experiments (Misra 2019), rerun with this project's training code.

  python experiments/paper.py --quick             # everything, tiny: a few minutes on a CPU
  python experiments/paper.py --protocol cpu      # reduced: about 60-90 minutes on 2 CPU cores
  python experiments/paper.py --protocol full     # the paper's: est. under an hour on a GPU

Three experiments, each also runnable alone with the same flags (e.g. `experiments/depth.py`):

* depth (`experiments/depth.py`): test accuracy of a conv + deep dense stack trained with plain
  SGD, as the stack grows from 15 to 25 layers;
* noise (`experiments/noise.py`): accuracy and loss of a CNN on test images with additive Gaussian
  noise, sigma 0..8;
* landscape (`experiments/landscape.py`): how rough a random MLP's output is over a 2-D grid.

Each writes its own folder under --out (results.json, report.md, PNG figures); this script then
collates them into --out/report.md and --out/results.json: our numbers as mean ± std over seeds
beside the published ones, and a verdict on each of the paper's claims computed from the numbers.
The command line and the collation are `suite`'s, shared with each experiment's own script.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as `python experiments/paper.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import depth, landscape, noise, suite  # noqa: E402

EXPERIMENTS: tuple[suite.Experiment, ...] = (depth, noise, landscape)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiments that --only names (all three by default); returns the exit status."""
  return suite.main(
    argv, EXPERIMENTS, prog="python experiments/paper.py", description=__doc__.split("\n\n")[0]
  )


if __name__ == "__main__":
  sys.exit(main())
