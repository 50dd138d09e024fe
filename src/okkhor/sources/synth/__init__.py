"""The synthetic generator: fonts, shaping, labels, drawing plan, imager and hand style, workers, writer, preview."""
