"""The synthetic generator: fonts and shaping, the hand style, and the writer of a data dir."""
