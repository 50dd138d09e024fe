"""File formats: the competition's parquet and CSV files, and the checkpoint file."""
