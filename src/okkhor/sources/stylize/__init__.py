"""Stylize: carry the hand of real images onto synthetic ones with an unpaired translator (CycleGAN)."""
