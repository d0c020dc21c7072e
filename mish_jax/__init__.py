"""mish-jax: an exact, fast Mish activation for JAX and Flax, with Pallas kernels."""

from mish_jax._src.activations import ACTIVATIONS as ACTIVATIONS
from mish_jax._src.activations import gelu as gelu
from mish_jax._src.activations import get_activation as get_activation
from mish_jax._src.activations import mish as mish
from mish_jax._src.activations import mish_grad as mish_grad
from mish_jax._src.activations import relu as relu
from mish_jax._src.activations import swish as swish
from mish_jax._src.dispatch import IMPLEMENTATIONS as IMPLEMENTATIONS
from mish_jax._src.dispatch import pallas_compiles as pallas_compiles
from mish_jax._src.linear import MishLinear as MishLinear
from mish_jax._src.linear import linear_mish as linear_mish

__version__ = "0.1.0"

__all__ = (
  "ACTIVATIONS",
  "IMPLEMENTATIONS",
  "MishLinear",
  "gelu",
  "get_activation",
  "linear_mish",
  "mish",
  "mish_grad",
  "pallas_compiles",
  "relu",
  "swish",
)
