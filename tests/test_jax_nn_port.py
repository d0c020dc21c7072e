"""JAX's own Mish tests (`tests/nn_test.py` at jax-v0.10.2), ported to both implementations.

They run as JAX runs them: `jtu.JaxTestCase` (`jax_enable_checks`, strict dtype promotion, rank
promotion raising), with x64 off and on. Only `nn.mish` is replaced, by `self.mish`; the TPU
tolerances are dropped (no TPU here).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.test_util import check_grads
from mish_jax.kernels.jax_compat import test_util as jtu

import mish_jax

# `[float] + jtu.dtypes.floating`, with float64 whichever x64 mode the module was imported in.
_FLOATING = [float, jnp.bfloat16, np.float16, np.float32, np.float64]


class _MishTests(jtu.JaxTestCase):
  __test__ = False  # Collected in the subclasses below, one per implementation and x64 mode.
  implementation: str

  def mish(self, x):
    return mish_jax.mish(x, implementation=self.implementation)

  def testMishGrad(self):
    check_grads(self.mish, (1e-8,), order=4, modes=["fwd"])
    check_grads(self.mish, (1e-8,), order=4, modes=["rev"])

  def testMishGradZero(self):
    check_grads(self.mish, (0.0,), order=1)

  def testMishGradNegInf(self):
    check_grads(self.mish, (-float("inf"),), order=1)

  def testMishGradNan(self):
    check_grads(self.mish, (float("nan"),), order=1)

  @parameterized.parameters(_FLOATING)
  def testMishZero(self, dtype):
    self.assertEqual(dtype(0), self.mish(dtype(0)))

  def testMishValue(self):
    val = self.mish(1e3)
    self.assertAllClose(val, 1e3, check_dtypes=False, atol=1e-3)

  @parameterized.parameters(jnp.float32, jnp.bfloat16, jnp.float16)
  def testDtypeMatchesInput(self, dtype):
    x = jnp.zeros((), dtype=dtype)
    out = self.mish(x)
    self.assertEqual(out.dtype, dtype)


def _test_case(implementation: str, x64: bool) -> type:
  name = f"MishTest_{implementation}_{'x64' if x64 else 'x32'}"
  cls = type(name, (_MishTests,), dict(implementation=implementation, __test__=True))
  return jtu.with_config(jax_enable_x64=x64)(cls)


MishTestXla = _test_case("xla", x64=False)
MishTestXlaX64 = _test_case("xla", x64=True)
MishTestPallas = _test_case("pallas", x64=False)
MishTestPallasX64 = _test_case("pallas", x64=True)
