"""jaxseq: sequence-to-sequence audio models in JAX/Flax."""
