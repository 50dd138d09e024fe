"""Data: the Kaggle file format, the prepare cache, folds, datasets, augmentation and the synthetic generator."""
