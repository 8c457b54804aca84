"""Problems to train and evaluate on: `problems` (training data, prompts, the sampler), `benchmarks`."""
