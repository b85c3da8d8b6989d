"""Losses of tiny-VAE distillation: pixel L1/L2, edge-keeping terms, an optional adversarial term, the encoder's.

The student decoder sees the teacher's latents and must reproduce the teacher decoder's image. Pixel losses alone
give a blurry decoder (the mean of what could be there); two terms keep edges:

- ``edge``: L1 between the Sobel gradients (x and y, per channel) of the student's and the teacher's image;
- ``fft``: L1 between the FFT magnitudes of both images at full, 1/2 and 1/4 resolution (a multi-scale frequency
  loss: high frequencies weigh as much as low ones).

No perceptual network is used (its weights would have to be downloaded). The optional adversarial term trains a
small patch discriminator from scratch with the hinge loss (as TAESD's training does with its own GAN setup).
Discriminator and decoder update in the same backward pass: the decoder's adversarial term goes through a copy of
the discriminator's parameters that carries no gradient (``torch.func.functional_call`` with detached
parameters), so one optimizer step moves the discriminator towards telling images apart and the decoder towards
fooling it, and the loop shared with the other objectives (one optimizer, DDP, exact resume) applies unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VAE_LOSS_NAMES = ("loss", "loss_l1", "loss_l2", "loss_edge", "loss_fft", "loss_adv", "loss_disc", "loss_enc")
FFT_SCALES = (1, 2, 4)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel gradients of every channel: (B, C, H, W) -> (B, 2C, H, W) (replicate padding)."""
    c = x.shape[1]
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernel = torch.stack([kx, kx.t()])[:, None].repeat(c, 1, 1, 1)  # (2C, 1, 3, 3), x then y per channel
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between Sobel gradients: penalises blurred or shifted edges, not flat colour errors."""
    return F.l1_loss(sobel(pred.float()), sobel(target.float()))


def fft_loss(pred: torch.Tensor, target: torch.Tensor, scales=FFT_SCALES) -> torch.Tensor:
    """Mean over ``scales`` of the L1 between FFT magnitudes (orthonormal 2-D FFT of average-pooled images)."""
    total = pred.new_zeros((), dtype=torch.float32)
    used = 0
    for s in scales:
        if min(pred.shape[-2:]) // s < 2:
            continue
        p, t = (F.avg_pool2d(x.float(), s) if s > 1 else x.float() for x in (pred, target))
        total = total + F.l1_loss(torch.fft.rfft2(p, norm="ortho").abs(), torch.fft.rfft2(t, norm="ortho").abs())
        used += 1
    return total / max(used, 1)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided 4x4 convs with GroupNorm and LeakyReLU, one logit per patch."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(width, width * 2, 4, stride=2, padding=1), nn.GroupNorm(min(8, width * 2), width * 2),
                       nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, padding=1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class TinyVaeStudent(nn.Module):
    """What the optimizer trains: the tiny VAE and, with the adversarial term, its discriminator.

    ``forward`` returns every loss term, so a DDP-wrapped student synchronises the gradients of every parameter
    that took part (the decoder, the encoder with ``train_encoder``, the discriminator).

    Args:
        vae: the ``AutoencoderTiny`` being distilled.
        weights: λ per term (``VaeConfig`` fields ``lambda_l1`` ... ``lambda_enc``).
        train_encoder: also train the encoder (otherwise it is frozen and ``loss_enc`` is 0).
        discriminator: the patch discriminator (None: no adversarial term).
    """

    def __init__(self, vae, weights: dict[str, float], train_encoder: bool, discriminator: nn.Module | None = None):
        super().__init__()
        self.vae = vae
        self.discriminator = discriminator
        self.weights = dict(weights)
        self.train_encoder = train_encoder
        vae.encoder.requires_grad_(train_encoder)

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def _frozen_discriminator(self, image: torch.Tensor) -> torch.Tensor:
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, params, (image,))

    def forward(self, latents: torch.Tensor, target: torch.Tensor, enc_image: torch.Tensor | None = None,
                enc_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms of one batch.

        Args:
            latents: the U-Net-space latents the decoder gets (teacher latents of images and of trajectories).
            target: the teacher decoder's images of the same latents.
            enc_image / enc_target: the encoder's input images and the teacher encoder's latents of them (U-Net
                space); required when the encoder trains.
        """
        w = self.weights
        pred = self.vae.decode(latents, return_dict=False)[0].float()
        target = target.float()
        zero = pred.new_zeros(())
        terms = {
            "loss_l1": F.l1_loss(pred, target),
            "loss_l2": F.mse_loss(pred, target),
            "loss_edge": edge_loss(pred, target) if w["lambda_edge"] else zero,
            "loss_fft": fft_loss(pred, target) if w["lambda_fft"] else zero,
            "loss_adv": zero,
            "loss_disc": zero,
            "loss_enc": zero,
        }
        if self.discriminator is not None:
            # Hinge loss; the discriminator sees the decoder's image without a gradient path back to the decoder.
            real, fake = self.discriminator(target), self.discriminator(pred.detach())
            terms["loss_disc"] = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            terms["loss_adv"] = -self._frozen_discriminator(pred).mean()
        if self.train_encoder:
            if enc_image is None or enc_target is None:
                raise ValueError("training the encoder needs enc_image and enc_target")
            latent = self.vae.encode(enc_image, return_dict=False)[0].float()
            terms["loss_enc"] = F.mse_loss(latent, enc_target.float())
        terms["loss"] = (w["lambda_l1"] * terms["loss_l1"] + w["lambda_l2"] * terms["loss_l2"]
                         + w["lambda_edge"] * terms["loss_edge"] + w["lambda_fft"] * terms["loss_fft"]
                         + w["lambda_adv"] * terms["loss_adv"] + terms["loss_disc"] + w["lambda_enc"] * terms["loss_enc"])
        return terms


def loss_weights(config: Any) -> dict[str, float]:
    """The λ of every term from a ``VaeConfig``."""
    return {k: float(getattr(config, k)) for k in
            ("lambda_l1", "lambda_l2", "lambda_edge", "lambda_fft", "lambda_adv", "lambda_enc")}
