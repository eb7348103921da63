"""Training stage: recipes, the tf.data pipeline, the GAN training loop and run folders."""
