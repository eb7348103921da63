"""Training stage: the input pipeline, the GAN step on TensorFlow or JAX, the run driver and run
folders."""
