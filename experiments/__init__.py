"""Experiments of mish-jax: data, training and the Mish vs ReLU vs Swish study."""
