"""Every named config option's valid names, in one light module: the config, help texts and builders read them."""
from __future__ import annotations

from okkhor.registry import Registry


def _timm_optimizers() -> list[str]:
    from timm.optim import list_optimizers

    return list(list_optimizers())


def _timm_activations() -> list[str]:
    from okkhor.models.timm_adapter import activation_names

    return activation_names()


# mix.kind -> what it does (okkhor.training.mixing builds each)
MIX_KINDS = Registry("mix.kind", {
    "none": "no mixing",
    "mixup": "blend two images, weights ~ Beta(alpha, alpha)",
    "cutmix": "paste a box of a second image, weights = pasted areas",
    "fmix": "paste a low-frequency random mask (FMix) of a second image, weights = the mask's area",
    "both": "cutmix with probability switch, else mixup",
    "dirichlet": "blend k images, weights ~ Dirichlet(alpha)",
    "manifold": "mixup of the features after backbone stage `layer`",
})

# aug.preset -> what it holds (okkhor.data.augment builds each on albumentations)
AUG_PRESETS = Registry("aug.preset", {
    "none": "no augmentation",
    "light": "small affine moves",
    "medium": "affine moves, grid or elastic distortion, stroke width, coarse dropout",
    "heavy": "stronger affine moves and distortion, stroke width, coarse or grid dropout",
})

# train.schedule -> what it does (okkhor.training.optim builds each); warmup (train.warmup_epochs) applies to cosine,
# poly and step
SCHEDULES = Registry("train.schedule", {
    "onecycle": "torch OneCycleLR (cos anneal, momentum cycling)",
    "cosine": "timm CosineLRScheduler to 0 at the run's end",
    "poly": "timm PolyLRScheduler (train.poly_power)",
    "step": "timm StepLRScheduler: x decay_rate every decay_epochs",
    "plateau": "torch ReduceLROnPlateau on the valid score",
    "constant": "torch ConstantLR(factor=1)",
})

# train.optimizer: any optimizer timm's create_optimizer_v2 knows (adamw, adam, sgd, lamb, lion, ...)
OPTIMIZERS = Registry("train.optimizer", {"adamw": "AdamW (decoupled weight decay)"}, more=_timm_optimizers)

# model.act: `default` keeps the model's own activation; every other name is one timm's get_act_layer knows
ACTIVATIONS = Registry("model.act", {"default": "the backbone's own activation", "mish": "Mish"},
                       more=_timm_activations)


def choices(registry: Registry) -> str:
    """The names joined for a help text: `none|mixup|cutmix|...`."""
    return "|".join(registry)
