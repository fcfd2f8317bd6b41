"""Training data: coordinates address the crop, bad files never stop an epoch, mixing, seeds."""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader

from infd_core.geometry import Size
from training import photoset
from training.data import (
    MAX_PIXELS,
    BadImageWarning,
    ImageFolder,
    MixedDataset,
    NeuralFieldCrops,
    RandomSquares,
    SquareCrops,
    _random_square,
    field_crop,
    load_image,
)
from training.photoset import build_photoset

LEVEL = 2.0 / 255.0  # one 8-bit step in [-1, 1] units


def _t(im: Image.Image) -> torch.Tensor:
    """PIL RGB → [1, 3, H, W] in [-1, 1] (independent of the module under test)."""
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


def _field(img: Image.Image, r: int, flip: bool) -> torch.Tensor:
    """Level r of the field: the whole image resized to r x r, mirrored if flipped."""
    im = img.resize((r, r), Image.Resampling.LANCZOS)
    return _t(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else im)


def _sample(field: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """Nearest field pixel at each coord; geometry is (y, x), grid_sample wants (x, y)."""
    return F.grid_sample(field, coord.flip(-1)[None], mode="nearest", align_corners=False)[0]


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())  # 600 x 400, not square: the field squashes it


@pytest.mark.parametrize("r,y0,x0,flip", [(400, 0, 0, False), (300, 37, 211, True), (97, 33, 0, False),
                                          (1000, 936, 5, True)])
def test_coord_addresses_the_crop_of_the_resized_image(coffee: Image.Image, r: int, y0: int, x0: int,
                                                       flip: bool) -> None:
    ex = field_crop(coffee, r, y0, x0, patch=64, enc_size=32, flip=flip)
    field = _field(coffee, r, flip)
    sampled = _sample(field, ex["coord"])
    assert torch.equal(sampled, field[0, :, y0:y0 + 64, x0:x0 + 64])  # coord is exactly the crop's pixels
    # gt is that crop (Pillow evaluates the resize over the crop only: 8-bit rounding may differ)
    assert (ex["gt"] - sampled).abs().max() <= LEVEL + 1e-6
    assert (ex["gt"] - sampled).abs().mean() < 1e-3
    assert torch.equal(ex["cell"], torch.full((64, 64, 2), 2.0 / r))
    assert ex["inp"].shape == (3, 32, 32) and ex["gt"].shape == (3, 64, 64)
    inp = _t(coffee.resize((32, 32), Image.Resampling.LANCZOS))[0]
    assert torch.equal(ex["inp"], inp.flip(-1) if flip else inp)
    # one pixel off is far off: the check above has teeth
    shifted = _sample(field, ex["coord"] + torch.tensor([0.0, 2.0 / r]))
    assert (ex["gt"] - shifted).abs().mean() > 10 * (ex["gt"] - sampled).abs().mean() + 1e-3


def test_gt_is_exact_when_no_resampling_is_needed() -> None:
    img = Image.fromarray(skdata.astronaut())  # 512², level 512 is the image itself
    for flip in (False, True):
        ex = field_crop(img, 512, 100, 300, patch=128, enc_size=64, flip=flip)
        assert torch.equal(ex["gt"], _sample(_field(img, 512, flip), ex["coord"]))


def test_dataset_items_address_their_level(coffee: Image.Image) -> None:
    ds = NeuralFieldCrops([coffee, Image.fromarray(skdata.rocket())], patch=64, enc_size=32, max_r=512)
    torch.manual_seed(0)
    for i in range(6):
        img = ds.images[i % 2]
        ex = ds[i % 2]
        r = round(2.0 / ex["cell"][0, 0, 0].item())
        assert torch.allclose(ex["cell"], torch.full_like(ex["cell"], 2.0 / r))
        assert 64 <= r <= min(min(img.size), 512)
        errors = {flip: (ex["gt"] - _sample(_field(img, r, flip), ex["coord"])).abs().max().item()
                  for flip in (False, True)}
        flip = min(errors, key=errors.__getitem__)
        assert errors[flip] <= LEVEL + 1e-6 < errors[not flip]  # one orientation matches, the other does not
        inp = _t(img.resize((32, 32), Image.Resampling.LANCZOS))[0]
        assert torch.equal(ex["inp"], inp.flip(-1) if flip else inp)  # inp flipped consistently


def test_several_crops_per_image_share_input_and_flip(coffee: Image.Image) -> None:
    ds = NeuralFieldCrops([coffee], patch=48, enc_size=32, max_r=400, crops=3)
    torch.manual_seed(1)
    for _ in range(4):
        ex = ds[0]
        assert ex["inp"].shape == (3, 32, 32) and ex["gt"].shape == (3, 3, 48, 48)
        assert ex["coord"].shape == ex["cell"].shape == (3, 48, 48, 2)
        inp = _t(coffee.resize((32, 32), Image.Resampling.LANCZOS))[0]
        flip = not torch.equal(ex["inp"], inp)
        assert torch.equal(ex["inp"], inp.flip(-1) if flip else inp)
        for k in range(3):  # each crop: its own level, the image's orientation
            r = round(2.0 / ex["cell"][k, 0, 0, 0].item())
            err = (ex["gt"][k] - _sample(_field(coffee, r, flip), ex["coord"][k])).abs().max().item()
            assert err <= LEVEL + 1e-6
    with pytest.raises(ValueError, match="crops"):
        NeuralFieldCrops([coffee], patch=48, crops=0)


def test_level_distribution() -> None:
    ds = NeuralFieldCrops([], patch=256, max_r=1024, p_max=0.5)
    torch.manual_seed(0)
    rs = torch.tensor([ds.draw_level(1500) for _ in range(4000)])
    assert rs.min() >= 256 and rs.max() == 1024
    assert abs((rs == 1024).float().mean().item() - (0.5 + 0.5 / 769)) < 0.03
    assert abs(rs[rs < 1024].float().mean().item() - 639.5) < 15  # uniform on [256, 1023]
    assert {ds.draw_level(700) for _ in range(200)} <= set(range(256, 701))
    assert ds.draw_level(100) == 256  # smaller than a patch: upsampled to min_r


def _write_bad_and_odd_files(root: Path) -> None:
    coffee = skdata.coffee()
    Image.fromarray(coffee).save(root / "good.jpg", quality=90)
    (root / "sub").mkdir()
    Image.fromarray(skdata.chelsea()).save(root / "sub" / "cat.webp")
    full = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    Image.fromarray(coffee[..., 0]).save(root / "grey.png")
    rgba = np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba).save(root / "rgba.png")
    pal = Image.fromarray(coffee).quantize(16)
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    pal.save(root / "palette.png", transparency=int(np.asarray(pal)[0, 0]))
    Image.fromarray(coffee).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.full((300, 300), 32768, np.uint16)).save(root / "deep16.png")
    Image.fromarray(coffee[:100, :100]).save(root / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(coffee).save(root / "rotated.jpg", exif=exif)  # stored 600 wide, shown 400 wide


def test_bad_files_are_converted_or_skipped(tmp_path: Path) -> None:
    _write_bad_and_odd_files(tmp_path)
    with pytest.warns(BadImageWarning) as caught:
        folder = ImageFolder(tmp_path, min_side=256)
    skipped = {Path(str(w.message).split()[2].rstrip(":")).name for w in caught}
    assert skipped == {"empty.png", "text.png", "tiny.png"}
    names = [p.name for p in folder.paths]
    assert folder.paths == sorted(folder.paths) and "cat.webp" in names and "notes.txt" not in names
    assert "truncated.jpg" in names  # its header is fine: it fails only when decoded

    by_name = {name: i for i, name in enumerate(names)}
    grey = np.asarray(folder[by_name["grey.png"]])
    assert grey.shape == (400, 600, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert (np.asarray(folder[by_name["rgba.png"]])[:10, :10] == 255).all()  # alpha on white
    assert (np.asarray(folder[by_name["palette.png"]])[0, 0] == 255).all()
    assert folder[by_name["cmyk.jpg"]].mode == "RGB"
    assert (np.asarray(folder[by_name["deep16.png"]]) == 128).all()  # 32768 / 257, not clipped to 255
    assert folder.sizes[by_name["rotated.jpg"]] == (600, 400)
    assert folder[by_name["rotated.jpg"]].size == (400, 600)  # (width, height), upright

    with pytest.warns(BadImageWarning, match="truncated.jpg"):
        replacement = folder[by_name["truncated.jpg"]]
    following = folder[(by_name["truncated.jpg"] + 1) % len(folder)]  # the next index (wrapping), deterministically
    assert np.array_equal(np.asarray(replacement), np.asarray(following))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)  # warned once per file, not every time
        folder[by_name["truncated.jpg"]]

    with pytest.warns(BadImageWarning) as caught:  # a whole epoch over a fresh folder
        crops = NeuralFieldCrops(ImageFolder(tmp_path), patch=64, enc_size=32, max_r=128)
        batches = list(DataLoader(crops, batch_size=4))
    assert sum("failed to decode" in str(w.message) for w in caught) == 1
    assert sum(len(b["gt"]) for b in batches) == len(crops) == len(names)
    assert all(bool(b["gt"].abs().max() <= 1.0) for b in batches)

    with pytest.warns(BadImageWarning) as caught:
        ImageFolder(tmp_path, verify=True)  # decoding up front finds it at listing time
    assert any("truncated.jpg: unreadable" in str(w.message) for w in caught)


def test_pixel_limits(tmp_path: Path) -> None:
    Image.fromarray(skdata.coffee()).save(tmp_path / "ok.png")
    Image.new("1", (16384, MAX_PIXELS // 16384 + 1)).save(tmp_path / "bomb.png")  # just over MAX_PIXELS
    with pytest.warns(BadImageWarning, match="bomb.png"):
        assert [p.name for p in ImageFolder(tmp_path).paths] == ["ok.png"]
    with pytest.raises(Image.DecompressionBombError):  # refused, not just warned about
        load_image(tmp_path / "bomb.png")
    with pytest.warns(BadImageWarning) as caught, pytest.raises(ValueError, match="no usable image"):
        ImageFolder(tmp_path, max_pixels=1000)
    assert any("ok.png: too large" in str(w.message) for w in caught)


def test_mixing_probabilities() -> None:
    low, high = [0] * 100, [1] * 5
    torch.manual_seed(0)
    balanced = MixedDataset([low, high], length=4000)
    assert len(balanced) == 4000
    assert abs(np.mean([balanced[i] for i in range(4000)]) - 0.5) < 0.03
    weighted = MixedDataset([low, high], weights=[0.8, 0.2], length=4000)
    assert abs(np.mean([weighted[i] for i in range(4000)]) - 0.2) < 0.03
    assert len(MixedDataset([low, high])) == 105
    with pytest.raises(ValueError):
        MixedDataset([low, high], weights=[1.0, -1.0])


def _flat(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([torch.cat([b["gt"].flatten(), b["coord"].flatten(), b["inp"].flatten()]) for b in batches])


def test_determinism_under_a_seed(coffee: Image.Image) -> None:
    ds = NeuralFieldCrops([coffee, coffee.rotate(90, expand=True)] * 2, patch=32, enc_size=32, max_r=400)

    def run(seed: int, workers: int) -> torch.Tensor:
        torch.manual_seed(seed)
        loader = DataLoader(ds, batch_size=2, num_workers=workers, generator=torch.Generator().manual_seed(seed))
        return _flat(list(loader))

    assert torch.equal(run(0, 0), run(0, 0))
    assert not torch.equal(run(0, 0), run(1, 0))
    assert torch.equal(run(3, 2), run(3, 2))


def test_square_crops(coffee: Image.Image) -> None:
    whole = SquareCrops([coffee], size=64)
    ex = whole[0]
    assert torch.equal(ex["inp"], _t(coffee.resize((64, 64), Image.Resampling.LANCZOS))[0])
    assert ex["box"].tolist() == [0.0, 0.0, 1.0, 1.0]

    crops = SquareCrops([coffee], size=64, crop_scale=(0.5, 0.8), hflip=True, repeats=50)
    assert len(crops) == 50
    torch.manual_seed(0)
    flips = 0
    for i in range(0, 50, 5):
        ex = crops[i]
        x0, y0, x1, y1 = ex["box"].tolist()
        side_w, side_h = (x1 - x0) * 600, (y1 - y0) * 400
        assert abs(side_w - side_h) < 1e-3 and 0.5 * 400 - 1 <= side_h <= 0.8 * 400 + 1  # square in pixels
        ref = _t(coffee.resize((64, 64), Image.Resampling.LANCZOS, box=(x0 * 600, y0 * 400, x1 * 600, y1 * 400)))[0]
        mirrored = _t(coffee.resize((64, 64), Image.Resampling.LANCZOS,
                                    box=((1 - x1) * 600, y0 * 400, (1 - x0) * 600, y1 * 400)))[0].flip(-1)
        # (box is float32: rebuilding the crop from it may move an 8-bit value by one step)
        plain, flipped = (torch.allclose(ex["inp"], t, atol=LEVEL + 1e-6) for t in (ref, mirrored))
        assert plain or flipped
        flips += not plain
    assert 0 < flips < 10


def test_random_squares_and_cache(tmp_path: Path, coffee: Image.Image) -> None:
    coffee.save(tmp_path / "coffee.png")
    folder = ImageFolder(tmp_path, cache=True)
    first = folder[0]
    (tmp_path / "coffee.png").unlink()  # served from memory now
    assert np.array_equal(np.asarray(folder[0]), np.asarray(first))
    squares = RandomSquares(folder, (0.1, 0.5), min_side=150)
    torch.manual_seed(0)
    sides = [squares[0].size for _ in range(50)]
    assert all(w == h and 150 <= w <= 200 for w, h in sides) and len(set(sides)) > 5
    torch.manual_seed(1)
    crop = np.asarray(squares[0])
    torch.manual_seed(1)
    x0, y0, side = _random_square(Size(height=400, width=600), (0.1, 0.5), 150)  # the same draws
    assert np.array_equal(crop, np.asarray(coffee)[y0:y0 + side, x0:x0 + side])  # a true sub-image, not resampled


def test_photoset_without_debian(tmp_path: Path) -> None:
    entries = build_photoset(tmp_path, holdout=1, debian=False)
    assert len(entries) == 10
    held = [e for e in entries if e["split"] == "holdout"]
    assert [e["id"] for e in held] == ["skimage-retina"]  # the only photo >= 1024 px
    train = {Path(e["file"]).name for e in entries} - {"skimage-retina.jpg"}
    assert {p.name for p in (tmp_path / "train").iterdir()} == train
    manifest = (tmp_path / "manifest.json").read_text()
    assert all(e["licence"] and e["width"] >= 300 for e in json.loads(manifest)["files"])
    build_photoset(tmp_path, holdout=1, debian=False)
    assert (tmp_path / "manifest.json").read_text() == manifest  # idempotent
    build_photoset(tmp_path, holdout=2, debian=False)
    assert len(list((tmp_path / "holdout").iterdir())) == 2 and len(list((tmp_path / "train").iterdir())) == 8


def _rcc(files: dict[str, bytes]) -> bytes:
    """A version-3 Qt resource bundle holding ``files`` (flat, uncompressed) under one directory."""
    import struct

    names = [b"dir"] + [n.encode() for n in files]
    name_blob, name_offsets = b"", []
    for n in names:
        name_offsets.append(len(name_blob))
        text = n.decode().encode("utf-16-be")
        name_blob += struct.pack(">HI", len(n), 0) + text
    data_blob, data_offsets = b"", []
    for payload in files.values():
        data_offsets.append(len(data_blob))
        data_blob += struct.pack(">I", len(payload)) + payload
    nodes = struct.pack(">IHII", 0, 2, 1, 1) + bytes(8)  # root: one child (node 1)
    nodes += struct.pack(">IHII", name_offsets[0], 2, len(files), 2) + bytes(8)  # "dir": nodes 2..
    for k in range(len(files)):
        nodes += struct.pack(">IHHHI", name_offsets[k + 1], 0, 0, 0, data_offsets[k]) + bytes(8)
    header = 24
    tree, data, names_at = header, header + len(nodes), header + len(nodes) + len(data_blob)
    return struct.pack(">4sIIIII", b"qres", 3, tree, data, names_at, 0) + nodes + data_blob + name_blob


def test_rcc_entries_and_jpeg_streams() -> None:
    import io

    def jpeg(size: tuple[int, int], seed: int) -> bytes:
        buf = io.BytesIO()
        noise = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        exif = Image.Exif()
        exif[0x010E] = "a description"
        Image.fromarray(noise).save(buf, "JPEG", quality=90, exif=exif, restart_marker_blocks=4)
        return buf.getvalue()

    small, large = jpeg((40, 30), 0), jpeg((96, 64), 1)
    bundle = _rcc({"a.jpg": small, "b.txt": b"hello"})
    assert photoset.rcc_entries(bundle) == {"dir/a.jpg": small, "dir/b.txt": b"hello"}
    with pytest.raises(ValueError, match="not a Qt resource"):
        photoset.rcc_entries(b"xxxx" + bundle[4:])
    # an Eet-like container: streams among other bytes, one cut short, a stray SOI in between
    blob = b"EET\0" + small + b"\xff\xd8\xff\x00junk" + large + b"tail" + large[: len(large) // 2]
    assert photoset.jpeg_streams(blob) == [small, large]


def _debs_or_skip(packages: tuple[str, ...]) -> None:
    for pkg in packages:
        try:
            photoset.fetch_deb(pkg, photoset.default_cache())
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"Debian package {pkg} not obtainable here (apt-get download): {e}")


# the v2 packages but enlightenment-data (400 MB): 62 MB of .debs, cached under ~/.cache/infd/debs
SMALL_V2 = ("palapeli-data", "tagua-data", "gnome-control-center-data", "tuxtype-data", "gcompris-qt-data")


def test_photoset_v2_packages(tmp_path: Path) -> None:
    _debs_or_skip(("mate-backgrounds", "plasma-workspace-wallpapers") + SMALL_V2)
    entries = build_photoset(tmp_path, cache=photoset.default_cache(), photo_set="all", packages=SMALL_V2)
    by_source: dict[str, int] = {}
    for e in entries:
        by_source[e["source"].split()[1]] = by_source.get(e["source"].split()[1], 0) + 1
    assert {k: by_source[k] for k in SMALL_V2} == {"palapeli-data": 5, "tagua-data": 4,
                                                   "gnome-control-center-data": 15, "tuxtype-data": 17,
                                                   "gcompris-qt-data": 114}
    assert all(e["licence"] and e["copyright"] and min(e["width"], e["height"]) >= 300 for e in entries)
    gc = [e for e in entries if e["source"].startswith("Debian gcompris")]
    assert sum(min(e["width"], e["height"]) >= 1024 for e in gc) == 39 and all(e["mode"] == "RGB" for e in gc)
    for e in gc:  # byte-for-byte copies of the streams in the bundles, and whole images
        assert (tmp_path / e["file"]).read_bytes()[:4] == b"RIFF"
        with Image.open(tmp_path / e["file"]) as im:
            im.load()
    held = sorted(e["id"] for e in entries if e["split"] == "holdout")
    assert held == sorted(i for i in photoset.DETAILED_HOLDOUT if i.split("-")[0] in ("gcompris", "tuxtype", "palapeli"))
    assert {p.name for p in (tmp_path / "holdout").iterdir()} == {Path(e["file"]).name for e in entries
                                                                   if e["split"] == "holdout"}
    nature = photoset.set_photos("nature", photoset.default_cache(), packages=SMALL_V2)
    assert all(p.domain == "nature" for p in nature) and len(nature) == 106


@pytest.mark.slow
def test_photoset_nature_full(tmp_path: Path) -> None:
    """The whole v2 nature set: downloads 488 MB of .debs once (enlightenment-data alone is 400 MB)."""
    _debs_or_skip(("mate-backgrounds", "plasma-workspace-wallpapers") + tuple(photoset.V2_SOURCES))
    entries = build_photoset(tmp_path, cache=photoset.default_cache(), photo_set="nature")
    assert len(entries) == 131 and all(e["domain"] == "nature" for e in entries)
    assert sorted(e["id"] for e in entries if e["split"] == "holdout") == sorted(photoset.DETAILED_HOLDOUT)
    enl = [e for e in entries if e["source"].startswith("Debian enlightenment")]
    assert len(enl) == 14 and all(min(e["width"], e["height"]) >= 2059 for e in enl)
