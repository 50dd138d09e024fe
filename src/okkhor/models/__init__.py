"""Models: a timm backbone with its activation, the component heads and the auxiliary grapheme head."""
