"""What writes a data dir: the ImageFolder import and the synthetic generator."""
