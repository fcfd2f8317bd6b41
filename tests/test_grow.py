"""Growing a trained autoencoder (training.grow) keeps what it computes and leaves the new capacity trainable."""
import dataclasses

import pytest
import torch

from infd_core import configs
from infd_core.autoencoder import Autoencoder, CoderConfig
from infd_core.geometry import level_grid
from training.grow import grow_autoencoder


def trained_like(cfg) -> Autoencoder:
    """A model whose every parameter is non-zero (a fresh one has zero-initialised layers that would hide mistakes)."""
    torch.manual_seed(0)
    ae = Autoencoder(cfg).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ae


def render(ae: Autoencoder, z: torch.Tensor, side: int) -> torch.Tensor:
    coord, cell = level_grid(side, side)
    return ae.renderer(ae.features(z), coord.expand(len(z), -1, -1, -1), cell.expand(len(z), -1, -1, -1))


def test_grown_v1_computes_the_same_phi_and_pixels_at_phi_resolution():
    small = trained_like(configs.cpu().autoencoder)
    big = Autoencoder(configs.cpu2().autoencoder).eval()
    info = grow_autoencoder(small, big)
    assert info["decoder_params"][1] > 2 * info["decoder_params"][0]
    assert len(info["new_blocks"]) == 3  # one more block on each of the three levels
    z = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(big.features(z), small.features(z), rtol=1e-5, atol=1e-5)
    # at phi's own resolution every query sits on a phi cell centre: nearest == bilinear features
    torch.testing.assert_close(render(big, z, 256), render(small, z, 256), rtol=1e-5, atol=1e-5)
    # between centres the grown renderer interpolates instead of jumping at cell edges
    assert (render(big, z, 512) - render(small, z, 512)).abs().mean() > 1e-3
    for name in ("encoder", "quantizer", "skip"):
        for (k, a), b in zip(getattr(small, name).state_dict().items(), getattr(big, name).state_dict().values()):
            assert a.equal(b), k


def test_a_wider_top_level_starts_with_a_projection_that_passes_phi_on():
    """cpu2 -> cpu3: the 256² level grows from 16 to 32 channels and a new 1x1 conv maps it to the
    same 16 phi channels; the grown model renders what the small one did, and the new channels
    get gradients through the projection."""
    small = trained_like(configs.cpu2().autoencoder)
    big = Autoencoder(configs.cpu3().autoencoder).eval()
    info = grow_autoencoder(small, big)
    assert small.phi_channels == big.phi_channels == 16 and info["new_blocks"] == ["decoder.2"]
    z = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(big.features(z), small.features(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(render(big, z, 512), render(small, z, 512), rtol=1e-5, atol=1e-5)
    render(big.train(), z, 64).square().mean().backward()
    assert big.decoder[2].weight.grad[:, 16:].abs().sum() > 0  # the new channels are connected by the first update
    with pytest.raises(ValueError, match="phi channels"):
        grow_autoencoder(small, Autoencoder(dataclasses.replace(configs.cpu3().autoencoder, phi_channels=24)))


def test_new_capacity_receives_gradients():
    small = trained_like(configs.cpu().autoencoder)
    big = Autoencoder(configs.cpu2().autoencoder)
    info = grow_autoencoder(small, big)
    render(big, torch.randn(1, 3, 64, 64), 64).square().mean().backward()
    new_block = dict(big.named_modules())[info["new_blocks"][0]]
    assert new_block.conv2.weight.grad.abs().sum() > 0  # an identity block at first, trainable from step 1
    top = big.decoder[1].mid.block_1.conv1.weight  # 128 channels in cpu2, 64 in v1
    assert top[:64, 64:].abs().sum() == 0  # the appended channels do not reach the old ones yet ...
    assert top.grad[:64, 64:].abs().sum() > 0  # ... and the first update connects them


def test_growing_refuses_what_would_change_the_function():
    small = trained_like(configs.cpu().autoencoder)
    other_encoder = dataclasses.replace(configs.cpu2().autoencoder, encoder=CoderConfig(ch=32, ch_mult=(1, 2, 4),
                                                                                          num_res_blocks=1, mid_attn=False))
    with pytest.raises(ValueError, match="encoder"):
        grow_autoencoder(small, Autoencoder(other_encoder))
    # 256 channels would need 8 per GroupNorm group (v1 has 4): the old groups' statistics would change
    too_wide = dataclasses.replace(configs.cpu2().autoencoder,
                                   decoder=CoderConfig(ch=16, ch_mult=(1, 4, 16), num_res_blocks=2, mid_attn=False))
    with pytest.raises(ValueError, match="per group"):
        grow_autoencoder(small, Autoencoder(too_wide))
    smaller = dataclasses.replace(configs.cpu().autoencoder,
                                  decoder=CoderConfig(ch=16, ch_mult=(1, 1, 2), num_res_blocks=1, mid_attn=False))
    with pytest.raises(ValueError, match="cannot grow"):
        grow_autoencoder(small, Autoencoder(smaller))
