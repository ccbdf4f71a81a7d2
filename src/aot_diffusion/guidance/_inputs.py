"""Input checks shared by the discriminators and their training loops (clear errors, early)."""

from __future__ import annotations

import torch

from ..aot import labels_to_ids


def sigma_vector(sigma, n: int, device) -> torch.Tensor:
    """sigma as a positive float tensor [n] from a number, a 0-dim tensor, [n] or [n, 1, 1, 1]."""
    sigma = torch.as_tensor(sigma, device=device)
    if sigma.numel() == 1:
        sigma = sigma.reshape(1).expand(n)
    elif sigma.numel() == n:
        sigma = sigma.reshape(n)
    else:
        raise ValueError(f"sigma must be a scalar or have one value per image ({n}), got shape {list(sigma.shape)}")
    if not sigma.is_floating_point():
        sigma = sigma.to(torch.float32)
    if bool((sigma <= 0).any()):
        raise ValueError("sigma must be positive")
    return sigma


def check_images(x, img_channels: int, img_resolution: int, what: str = "x") -> None:
    expected = (img_channels, img_resolution, img_resolution)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}], got {shape}")


def check_class_labels(class_labels, n: int, label_dim: int):
    """Validated labels (ids [N] or one-hot [N, label_dim]) for a model with ``label_dim`` classes (0: none)."""
    if label_dim == 0:
        if class_labels is not None:
            raise ValueError("this discriminator is unconditional (label_dim=0) but class_labels were given")
        return None
    if class_labels is None:
        raise ValueError(f"this discriminator is conditional (label_dim={label_dim}): class_labels are required")
    class_labels = torch.as_tensor(class_labels)
    if class_labels.shape[0] != n:
        raise ValueError(f"class_labels has {class_labels.shape[0]} rows but x has {n} images")
    if class_labels.ndim == 2:
        if class_labels.shape[1] != label_dim:
            raise ValueError(f"one-hot class_labels must have {label_dim} columns, got {class_labels.shape[1]}")
    elif class_labels.ndim == 1:
        if class_labels.is_floating_point() or not bool(((class_labels >= 0) & (class_labels < label_dim)).all()):
            raise ValueError(f"class ids must be integers in [0, {label_dim})")
    else:
        raise ValueError(f"class_labels must be ids [N] or one-hot [N, {label_dim}], got {list(class_labels.shape)}")
    return class_labels


def check_set(images, labels, what: str):
    """Class ids [N] on the images' device (or None) for a set of ``what`` images [N, C, H, W]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"{what} images must be a floating-point tensor [N, C, H, W]")
    if images.shape[0] == 0:
        raise ValueError(f"{what} images are empty")
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{what} labels have {labels.shape[0]} rows but there are {images.shape[0]} {what} images")
    return labels_to_ids(labels, images.shape[0]).to(images.device)


def make_generator(seed, device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (0 when None)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen
