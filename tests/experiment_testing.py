"""What the tests of the experiments share: a small config, synthetic data, record helpers."""

import numpy as np

from experiments import data, train
from experiments.records import RunRecord

# A small CNN and short runs: what these tests check does not depend on the size.
SMALL = train.Config(
  model_options={"features": (8, 16), "dense": 32},
  epochs=2,
  batch_size=32,
  eval_batch_size=64,
  learning_rate=3e-3,
)


def synthetic_dataset(num_train: int = 256, num_test: int = 100, seed: int = 0) -> data.Dataset:
  """Noisy 28x28 images whose class is the position of a bright 6x6 square: learnable fast."""
  rng = np.random.default_rng(seed)

  def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.uniform(0, 0.3, (n, 28, 28, 1)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
      row, col = divmod(int(label), 5)
      image[2 + 12 * row : 8 + 12 * row, 1 + 5 * col : 7 + 5 * col] = 1.0
    return images, labels

  train_images, train_labels = split(num_train)
  test_images, test_labels = split(num_test)
  return data.Dataset(
    name="synthetic",
    train_images=train_images,
    train_labels=train_labels,
    test_images=test_images,
    test_labels=test_labels,
    class_names=tuple(str(i) for i in range(10)),
    source="synthetic",
  )


def without_times(record: dict) -> dict:
  """A record with its wall-clock fields removed, for comparing runs."""
  timed = ("epoch_time_s", "epoch_cpu_time_s", "eval_time_s", "compile_time_s")
  record = {k: v for k, v in record.items() if k not in timed}
  record["epochs"] = [{k: v for k, v in e.items() if k not in timed} for e in record["epochs"]]
  return record


def run_record(activation: str, accuracy: float, seconds: float, seed: int = 0) -> RunRecord:
  """A run's record with the given test accuracy and epoch time (other fields plausible)."""
  return RunRecord(
    activation=activation,
    seed=seed,
    epochs=[{"epoch": 1, "train_loss": 1.0, "test_loss": 0.9, "test_accuracy": accuracy}],
    test_accuracy=accuracy,
    test_macro_f1=accuracy - 0.001,
    test_loss=0.1,
    test_per_class_f1=[accuracy] * 10,
    test_confusion_matrix=np.eye(10, dtype=int).tolist(),
    epoch_time_s=seconds,
    epoch_cpu_time_s=2 * seconds,
    compile_time_s=seconds / 10,
    params=1,
    non_trainable_params=0,
    devices=1,
    config={},
  )
