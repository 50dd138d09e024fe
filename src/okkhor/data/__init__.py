"""What reads a data dir: the prepare cache, folds, a run's data sources and sampler, datasets and augmentation."""
