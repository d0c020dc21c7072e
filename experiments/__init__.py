"""Experiments of mish-jax: the Mish vs ReLU vs Swish study and the Mish paper's tests.

Commands: `mnist.py` (the main job), `paper.py` (`depth.py`, `noise.py`, `landscape.py`, each also
alone), `data.py` (offline MNIST). The layers they share, one concern per module: `models`,
`train` (with `checkpoints`), `sweep`, `stats`, `records`, `report`, `store` (sealed files),
`suite` (the paper experiments' runner), `data_files` and `cli` (the one error path).
"""
