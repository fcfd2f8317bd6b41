"""Assemble the offline photo set: real photos that install from PyPI and Debian.

    python -m training.photoset --out runs/photoset [--set v1|nature|all] [--holdout N] [--cache DIR] [--no-debian]

Sets. ``v1`` (the default, what the shipped model was trained on and what training.default_model
builds) is the 33 photos below with 3 held out. ``all`` adds 181 photos from seven more Debian
packages (214 in all); ``nature`` keeps the 131 of ``all`` that show landscapes, plants, animals,
water or sky (123 train + 8 held out; 4.1x v1's 30 training photos) and is the v2 training set.
Why nature: what the packages hold is mostly nature (131 of 214; 91 of the 120 photos >= 1024 px);
the rest are 45 monument snapshots at ~1024x700, instruments, gadgets and space images, each too
few to be learnt as a domain by a small model, and a coherent domain gives more coherent samples.
The ``domain`` of each photo is in the manifest, so ``all`` stays one flag away.

The v2 sets hold out DETAILED_HOLDOUT, 8 photos chosen by eye for fine detail, where the v1 model
is weakest (its 3 held-out photos are smooth): Spruce-Needles and Lichen-Branches (enlightenment,
3840 px: needles and lichen threads against bokeh), the cheetah and gorilla (GCompris, 1920 px:
fur, whiskers, eyes), kcas11 (tuxtype, rice terraces: hundreds of thin curved edges), lxqt flowers
(a meadow of small flowers, 3000 px), the honey bee (palapeli: hairs, compound eye, petals) and the
hedgehog (GCompris, 1024 px: spines; one from the 512-1023 px band).

Sources, each file copied byte for byte (no re-encoding, so at its original quality):

* scikit-image's bundled data: the colour photos astronaut, chelsea, coffee, rocket,
  motorcycle_left/right, hubble_deep_field, retina. Left out: the greyscale textures
  (grass, gravel, brick) and other grey or synthetic images (camera, moon, coins, phantom, …):
  this is a colour model and a texture converted to grey RGB would only teach it that colour
  is optional.
* scikit-learn's ``load_sample_images()`` files: china.jpg, flower.jpg.
* Debian ``mate-backgrounds``: the 12 nature photos in ``usr/share/backgrounds/mate/nature``.
* Debian ``plasma-workspace-wallpapers``: 11 photos, the largest size of each. Autumn and
  Volna, though named like photos, are digital renders (a painted tree, a low-poly beach)
  and are left out like the package's other renders.

* v2 sets (photos >= 512 px; each left-out kind named, with the reason, where it is listed):
  Debian ``gcompris-qt-data``: 114 WebP photos in Qt resource bundles (``.rcc``, parsed by
  ``rcc_entries``): 33 animals (erase) and 6 underwater (clickgame) at 1440-1920 px, 24 farm and
  world animals, 45 monuments and 6 music scenes at ~1024 px. ``enlightenment-data``: 15 wallpapers
  at 3840x2160, JPEG streams inside Edje/Eet files carved out by ``jpeg_streams`` (marker walk,
  each stream decoded to check it). ``tuxtype-data``: 12 landscapes and 5 space photos, 1280x1024.
  ``lxqt-themes``: 11 nature photos up to 3000 px. ``tagua-data``: 4 wallpapers. ``palapeli-data``:
  5 puzzle photos. ``gnome-control-center-data``: 15 account pictures, 512x512. Looked at and left
  out: ``kphotoalbum``'s demo photos (snapshots of private people at 800 px, some stored rotated
  with an EXIF orientation) and its documentation screenshots.
  Download sizes (Debian 12): enlightenment-data 400.6 MB, gcompris-qt-data 44.2, lxqt-themes 25.8,
  tuxtype-data 9.9, gnome-control-center-data 3.6, tagua-data 2.3, palapeli-data 2.1 (488 MB).

The .deb files are fetched with ``apt-get download`` (``apt-get update`` is run only if that
fails) and unpacked with ``dpkg -x`` into a cache directory, never installed; a re-run reuses
the cache. Licences are recorded per file: scikit-image's from its ``skimage.data`` docstrings,
scikit-learn's from ``sklearn/datasets/images/README.txt``, the Debian ones from the package's
``usr/share/doc/PKG/copyright`` (DEP-5, last matching ``Files:`` paragraph) plus, for Plasma,
the per-wallpaper ``metadata.json`` licence and author, which differ from the copyright file.

In ``v1``, ``N`` photos are held out (``DIR/holdout``, never in ``DIR/train``), chosen deterministically:
photos with a short side of at least 1024 px first, taking the sources in turn (by name), each
source's photos in the order of the SHA-256 of their ids; then the smaller photos likewise.
``manifest.json`` and ``MANIFEST.md`` list every file.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from PIL import Image

__all__ = [
    "DETAILED_HOLDOUT",
    "SETS",
    "Photo",
    "build_photoset",
    "debian_photos",
    "jpeg_streams",
    "main",
    "rcc_entries",
    "set_photos",
    "skimage_photos",
    "sklearn_photos",
    "v2_photos",
]

# file in skimage/data -> (credit, licence), as the skimage.data docstrings state them
_PD, _CC0 = "public domain", "CC0 (\"No copyright restrictions. CC0 by the photographer\")"
_MIDDLEBURY = "Middlebury 2014 stereo benchmark (Scharstein et al.), downsampled 4x"
_UNSTATED = "not stated in scikit-image's docs (shipped in the BSD-3-Clause wheel)"
SKIMAGE_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("NASA (Eileen Collins), NASA Great Images",
                      f"{_PD} (\"No known copyright restrictions, released into the public domain\")"),
    "chelsea.png": ("Stefan van der Walt", _CC0),
    "coffee.png": ("Rachel Michetti, Pikolo Espresso Bar", _CC0),
    "rocket.jpg": ("SpaceX (DSCOVR launch on Falcon 9)", f"{_PD} (\"released in the public domain\" by SpaceX)"),
    "motorcycle_left.png": (_MIDDLEBURY, _UNSTATED),
    "motorcycle_right.png": (_MIDDLEBURY, _UNSTATED),
    "hubble_deep_field.jpg": ("NASA, HubbleSite (Hubble eXtreme Deep Field)",
                              f"{_PD} (\"may be freely used in the public domain\")"),
    "retina.jpg": ("Mikael Häggström, Wikimedia Commons", "CC0 1.0 Universal Public Domain Dedication"),
}
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MATE_PHOTOS = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops",
               "Storm", "TwoWings", "Wood", "YellowFlower")
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am")
# package -> directory of the images inside the package (also the root the DEP-5 patterns match against)
DEBIAN_ROOTS = {"mate-backgrounds": "usr/share/backgrounds/mate", "plasma-workspace-wallpapers": "usr/share/wallpapers"}
# old-set photos outside the nature domain (people, objects, buildings, space, medicine, man-made textures)
V1_OTHER = {"skimage-astronaut", "skimage-coffee", "skimage-rocket", "skimage-motorcycle_left",
            "skimage-motorcycle_right", "skimage-hubble_deep_field", "skimage-retina", "sklearn-china", "mate-Wood",
            "plasma-ColorfulCups", "plasma-Grey"}
HIGH_RES = 1024  # holdout photos are drawn first from photos with at least this short side


@dataclass(frozen=True)
class Photo:
    """One photo to copy: where it is, where it comes from, under which terms."""

    id: str  # unique, also the output file stem, e.g. "mate-Aqua"
    src: Path
    source: str  # distribution and version, e.g. "Debian mate-backgrounds 1.26.0-1"
    original_path: str  # path inside that distribution
    licence: str
    copyright: str
    note: str = ""
    domain: str = "nature"  # "nature" (landscapes, plants, animals, water, sky) or "other"


def _domain(photo_id: str) -> str:
    return "other" if photo_id in V1_OTHER else "nature"


def skimage_photos() -> list[Photo]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [Photo(f"skimage-{Path(name).stem}", root / name, f"PyPI scikit-image {version('scikit-image')}",
                  f"skimage/data/{name}", licence, credit, "licence as stated in the skimage.data docstring",
                  _domain(f"skimage-{Path(name).stem}"))
            for name, (credit, licence) in SKIMAGE_PHOTOS.items()]


def sklearn_photos() -> list[Photo]:
    import sklearn.datasets

    root = Path(sklearn.datasets.__file__).parent / "images"
    blocks = {b.split("\n", 1)[0].strip(): "Image: " + b.strip()
              for b in re.split(r"(?m)^Image: ", (root / "README.txt").read_text()) if b.strip()}
    photos = []
    for name in SKLEARN_PHOTOS:
        block = blocks[name]
        licence = "CC-BY-2.0" if "creativecommons.org/licenses/by/2.0" in block else "see note"
        credit = re.search(r"(?m)^Attribution: (.*)$", block)
        photos.append(Photo(f"sklearn-{Path(name).stem}", root / name, f"PyPI scikit-learn {version('scikit-learn')}",
                            f"sklearn/datasets/images/{name}", licence, credit.group(1) if credit else "",
                            "sklearn/datasets/images/README.txt: " + " | ".join(block.splitlines()),
                            _domain(f"sklearn-{Path(name).stem}")))
    return photos


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def fetch_deb(pkg: str, cache: Path) -> tuple[Path, str]:
    """Unpack Debian package ``pkg`` into ``cache/pkg`` (once); returns (that dir, version)."""
    dest, marker = cache / pkg, cache / pkg / ".extracted"
    if marker.exists():
        return dest, marker.read_text().strip()
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob(f"{pkg}_*.deb")) and _run(["apt-get", "download", pkg], cache).returncode != 0:
        _run(["apt-get", "update"])  # the package lists may be missing or stale
        done = _run(["apt-get", "download", pkg], cache)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get download {pkg} failed: {done.stderr.strip()}")
    deb = max(cache.glob(f"{pkg}_*.deb"))
    deb_version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
    marker.write_text(deb_version + "\n")
    return dest, deb_version


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable debian/copyright file (continuation lines joined)."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip()
            current[key] = value.strip()
    return paragraphs


def dep5_terms(paragraphs: list[dict[str, str]], relpath: str) -> tuple[str, str]:
    """``(copyright, licence)`` for ``relpath``: the last matching ``Files:`` paragraph wins."""
    hit = None
    for p in paragraphs:
        if "Files" in p and any(fnmatch.fnmatchcase(relpath, pat) for pat in p["Files"].split()):
            hit = p
    if hit is None:
        raise LookupError(f"no Files: paragraph matches {relpath}")
    return " ".join(hit.get("Copyright", "").split()), hit.get("License", "").splitlines()[0]


def debian_photos(cache: Path) -> list[Photo]:
    photos = []
    for pkg, root in DEBIAN_ROOTS.items():
        tree, version = fetch_deb(pkg, cache)
        copyright_file = f"usr/share/doc/{pkg}/copyright"
        dep5 = parse_dep5((tree / copyright_file).read_text(encoding="utf-8", errors="replace"))
        source = f"Debian {pkg} {version}"
        if pkg == "mate-backgrounds":
            for name in MATE_PHOTOS:
                rel = f"nature/{name}.jpg"
                holder, licence = dep5_terms(dep5, rel)
                photos.append(Photo(f"mate-{name}", tree / root / rel, source, f"{root}/{rel}", licence, holder,
                                    f"licence and copyright from {copyright_file}", _domain(f"mate-{name}")))
        else:
            for name in PLASMA_PHOTOS:
                # the other sizes are symlinks to the one real file (or smaller renditions of it)
                images = sorted((f for f in (tree / root / name / "contents/images").iterdir() if not f.is_symlink()),
                                key=lambda f: (_pixels(f), f.name))
                rel = images[-1].relative_to(tree / root).as_posix()
                holder, licence = dep5_terms(dep5, rel)
                meta = json.loads((tree / root / name / "metadata.json").read_text())["KPlugin"]
                author = ", ".join(a.get("Name", "") for a in meta.get("Authors", []))
                photos.append(Photo(f"plasma-{name}", images[-1], source, f"{root}/{rel}", licence,
                                    f"{holder}; author: {author}",
                                    f"licence and copyright from {copyright_file} (Files: *); the wallpaper's "
                                    f"{root}/{name}/metadata.json says License: {meta.get('License', '?')}",
                                    _domain(f"plasma-{name}")))
    return photos


# ---- photos inside container files: Qt resource bundles (.rcc) and Edje/Eet files (.edj) ----

def rcc_entries(blob: bytes) -> dict[str, bytes]:
    """Uncompressed files of a Qt binary resource bundle (``rcc --binary``), by path.

    Layout (qtbase src/corelib/io/qresource.cpp): a header ``qres``, version, then offsets of the
    tree, data and names sections (all big-endian). Tree nodes are 14 bytes (22 from version 2,
    which adds a modification time): name offset u32, flags u16, then for a directory the child
    count and first child index (u32 each), for a file country u16, language u16 and data offset
    u32. A data entry is a u32 length and the bytes; a name is a u16 length, a u32 hash and UTF-16BE.
    Compressed files (flag 1 zlib, 4 zstd) are skipped: photos are stored as they are.
    """
    magic, ver, tree, data, names = struct.unpack_from(">4sIIII", blob, 0)
    if magic != b"qres" or not 1 <= ver <= 3:
        raise ValueError(f"not a Qt resource bundle (magic {magic!r}, version {ver})")
    node_size = 14 + (8 if ver >= 2 else 0)
    files: dict[str, bytes] = {}
    stack = [(0, "")]  # (node index, path of its parent)
    while stack:
        index, parent = stack.pop()
        base = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", blob, base)
        path = parent
        if index:  # the root node has no name
            length = struct.unpack_from(">H", blob, names + name_offset)[0]
            start = names + name_offset + 6
            path = f"{parent}/{blob[start:start + 2 * length].decode('utf-16-be')}".lstrip("/")
        if flags & 2:
            count, first = struct.unpack_from(">II", blob, base + 6)
            stack.extend((child, path) for child in range(first, first + count))
        elif not flags & 5:
            offset = data + struct.unpack_from(">I", blob, base + 10)[0]
            size = struct.unpack_from(">I", blob, offset)[0]
            files[path] = blob[offset + 4:offset + 4 + size]
    return files


def _jpeg_end(blob: bytes, start: int) -> int:
    """Offset just past the EOI of the JPEG whose SOI is at ``start``, or -1 if it is cut short.

    Walks the marker segments by their lengths, so an EOI inside an embedded EXIF thumbnail is
    skipped; after each SOS it scans the entropy-coded data, where 0xFF is followed only by a
    stuffed 0x00, fill bytes or a restart marker, until the next real marker.
    """
    i, n = start + 2, len(blob)
    while i + 4 <= n:
        if blob[i] != 0xFF:
            return -1
        marker = blob[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD9:
            return i + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(blob[i + 2:i + 4], "big")
            if marker == 0xDA:
                i = _entropy_end(blob, i)
                if i < 0:
                    return -1
    return -1


def _entropy_end(blob: bytes, i: int) -> int:
    """Offset of the first marker after entropy-coded data starting at ``i`` (-1 if none)."""
    while True:
        j = blob.find(b"\xff", i)
        if j < 0 or j + 1 >= len(blob):
            return -1
        follower = blob[j + 1]
        if follower == 0xFF:
            i = j + 1
        elif follower == 0 or 0xD0 <= follower <= 0xD7:
            i = j + 2
        else:
            return j


def jpeg_streams(blob: bytes) -> list[bytes]:
    """Every complete JPEG stream embedded in ``blob`` that decodes (SOI … EOI, checked by PIL)."""
    found, i = [], 0
    while (start := blob.find(b"\xff\xd8\xff", i)) >= 0:
        end = _jpeg_end(blob, start)
        if end < 0:
            i = start + 2
            continue
        try:
            with Image.open(io.BytesIO(blob[start:end])) as im:
                im.load()
            found.append(blob[start:end])
            i = end
        except (OSError, SyntaxError, ValueError):
            i = start + 2
    return found


def _extracted(tree: Path, name: str, data: bytes) -> Path:
    """``data`` written once to ``tree/.infd-extracted/name`` (byte for byte), so a Photo has a file."""
    path = tree / ".infd-extracted" / name
    if not (path.exists() and path.stat().st_size == len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def _largest(images: list[bytes]) -> bytes:
    def pixels(b: bytes) -> int:
        with Image.open(io.BytesIO(b)) as im:
            return im.size[0] * im.size[1]
    return max(images, key=pixels)


# ---- the packages added for the v2 sets (see the module docstring for what each holds) ----

@dataclass(frozen=True)
class _Package:
    """An unpacked .deb and the terms of its copyright file."""

    name: str
    tree: Path
    source: str
    copyright_text: str

    @property
    def copyright_file(self) -> str:
        return f"usr/share/doc/{self.name}/copyright"


def _package(name: str, cache: Path) -> _Package:
    tree, deb_version = fetch_deb(name, cache)
    text = (tree / f"usr/share/doc/{name}/copyright").read_text(encoding="utf-8", errors="replace")
    return _Package(name, tree, f"Debian {name} {deb_version}", text)


def dep5_terms_any(paragraphs: list[dict[str, str]], candidates: list[str]) -> tuple[str, str]:
    """``dep5_terms`` for the first of ``candidates`` (upstream paths) matched by the latest paragraph.

    Installed paths differ from the upstream paths that debian/copyright names, and a resource may
    have been converted (GCompris ships ``.jpg`` sources as ``.webp``), so each photo offers a few.
    """
    best, terms = -1, ("", "")
    for rel in candidates:
        for k, p in enumerate(paragraphs):
            if k > best and "Files" in p and any(fnmatch.fnmatchcase(rel, pat) for pat in p["Files"].split()):
                best, terms = k, dep5_terms(paragraphs[:k + 1], rel)
    if best < 0:
        raise LookupError(f"no Files: paragraph matches any of {candidates}")
    return terms


def _dep5_photo(pkg: _Package, photo_id: str, src: Path, original: str, candidates: list[str], domain: str,
                note: str = "") -> Photo:
    holder, licence = dep5_terms_any(parse_dep5(pkg.copyright_text), candidates)
    note = f"licence and copyright from {pkg.copyright_file} (Files: matching {candidates[0]})" + note
    return Photo(photo_id, src, pkg.source, original, licence, holder, note, domain)


def _stated(pkg: _Package, phrase: str) -> str:
    """``phrase``, checked to be in the package's copyright file (whitespace-insensitive)."""
    if " ".join(phrase.split()) not in " ".join(pkg.copyright_text.split()):
        raise LookupError(f"{pkg.copyright_file} no longer says: {phrase}")
    return phrase


# GCompris activities whose large images are photos -> domain. Left out: babyshapes and details
# (paintings: Van Gogh, Bruegel, Gauguin, Bosschaert), solar_system (planets cut out on flat
# backgrounds, some rendered), lang (600² word cards cut out on transparency).
GCOMPRIS_ACTIVITIES = {"erase": "nature", "clickgame": "nature", "explore_farm_animals": "nature",
                       "explore_world_animals": "nature", "explore_monuments": "other", "explore_world_music": "other"}
GCOMPRIS_EXCLUDE = {
    "explore_monuments/castleClinton": "greyscale",
    "explore_monuments/georgeWashingtonBirthplace": "a black frame along two edges (a scanned print)",
    "explore_world_music/middleeast": "an instrument cut out on a flat grey backdrop",
}
MIN_SIDE = 512  # smaller images in the new packages are icons, cards and thumbnails


def gcompris_photos(cache: Path) -> list[Photo]:
    pkg = _package("gcompris-qt-data", cache)
    rcc_dir = "usr/share/gcompris-qt/rcc"
    photos = []
    for activity, domain in GCOMPRIS_ACTIVITIES.items():
        for path, data in sorted(rcc_entries((pkg.tree / rcc_dir / f"{activity}.rcc").read_bytes()).items()):
            stem, suffix = Path(path).stem, Path(path).suffix.lower()
            if suffix not in (".webp", ".jpg", ".jpeg", ".png") or f"{activity}/{stem}" in GCOMPRIS_EXCLUDE:
                continue
            with Image.open(io.BytesIO(data)) as im:
                if min(im.size) < MIN_SIDE:
                    continue
            upstream = path.removeprefix("gcompris/")
            photo_id = f"gcompris-{activity}-{stem}"
            candidates = [upstream] + [upstream[:-len(suffix)] + ext for ext in (".jpg", ".png", ".svg")]
            photos.append(_dep5_photo(pkg, photo_id, _extracted(pkg.tree, f"{photo_id}{suffix}", data),
                                      f"{rcc_dir}/{activity}.rcc:/{path}", candidates, domain,
                                      "; stored uncompressed in the Qt resource bundle, copied out byte for byte"))
    return photos


# Enlightenment wallpapers: each .edj holds one photo in ~13 sizes as JPEG streams; the largest is
# taken. Left out: Dunes and Flat-Fan (flat vector renders), Flat-Stone-Pattern (a 750² tiling
# texture), Paper-Flower (a line drawing), Squiggle* (patterns, no JPEG inside).
ENLIGHTENMENT_PHOTOS = {"Bamboo": "nature", "Foggy-Trees": "nature", "God-Rays": "nature", "Green-Maple": "nature",
                        "Lichen-Branches": "nature", "Mountain": "nature", "Peaks": "nature", "Red-Maple": "nature",
                        "Sea-of-Lanterns": "other", "Snow-Trees": "nature", "Spruce-Needles": "nature",
                        "Sunset-Clouds": "nature", "Sunset-Hills": "nature", "White-Flower": "nature",
                        "Yellow-Flower": "nature"}


def enlightenment_photos(cache: Path) -> list[Photo]:
    pkg = _package("enlightenment-data", cache)
    root = "usr/share/enlightenment/data/backgrounds"
    photos = []
    for name, domain in ENLIGHTENMENT_PHOTOS.items():
        streams = jpeg_streams((pkg.tree / root / f"{name}.edj").read_bytes())
        if not streams:
            raise ValueError(f"no JPEG stream in {root}/{name}.edj")
        photo_id = f"enlightenment-{name}"
        photos.append(_dep5_photo(pkg, photo_id, _extracted(pkg.tree, f"{photo_id}.jpg", _largest(streams)),
                                  f"{root}/{name}.edj (largest embedded JPEG)", [f"data/backgrounds/{name}.edj"],
                                  domain, "; the JPEG stream carved out of the Eet file byte for byte"))
    return photos


# tuxtype-data: kcas0..11 are landscapes; backgrounds/0..4 are space photos (Hubble, Spitzer,
# Cassini, a Mars sunset from Spirit). Its copyright file is not DEP-5: the licence is quoted.
TUXTYPE_PHOTOS = {**{f"kcas{k}": "nature" for k in range(12)}, **{f"backgrounds/{k}": "other" for k in range(5)}}


def tuxtype_photos(cache: Path) -> list[Photo]:
    pkg = _package("tuxtype-data", cache)
    root = "usr/share/tuxtype/images"
    licence = _stated(pkg, "Tux Typing is licensed under the GNU Public License version 2.")
    credit = _stated(pkg, "The remainder of the images, are from a number of public domain sources. Specifically, "
                          "they are from the National Oceanic and Atmospheric Administration (NOAA) and the U.S. "
                          "Fish and Wildlife Service (FWS).")
    return [Photo(f"tuxtype-{name.replace('/', '-')}", pkg.tree / root / f"{name}.jpg", pkg.source,
                  f"{root}/{name}.jpg", licence, f"Tux4Kids; README_IMAGES: {credit}",
                  f"quoted from {pkg.copyright_file} (not DEP-5; README_IMAGES lists older kcas*.gif names)", domain)
            for name, domain in TUXTYPE_PHOTOS.items()]


# lxqt-themes wallpapers that are photos; the others (origami*, triangles*, waves*, plasma*,
# kde-plasma, simple_blue_widescreen) are renders with logos.
LXQT_PHOTOS = ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
               "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")


def lxqt_photos(cache: Path) -> list[Photo]:
    pkg = _package("lxqt-themes", cache)
    root = "usr/share/lxqt/wallpapers"
    return [_dep5_photo(pkg, f"lxqt-{Path(name).stem}", pkg.tree / root / name, f"{root}/{name}",
                        [f"wallpapers/{name}"], "nature") for name in LXQT_PHOTOS]


TAGUA_PHOTOS = {"Dark_Sunset": "nature", "Dark_Waters": "nature", "Mont_Blanc": "nature", "Prmao": "other"}


def tagua_photos(cache: Path) -> list[Photo]:
    pkg = _package("tagua-data", cache)
    root = "usr/share/tagua/themes/wallpapers"
    photos = []
    for name, domain in TAGUA_PHOTOS.items():  # the copyright file says e.g. "Prmao.jpg: Maurizio Monge, GPL"
        line = re.search(rf"(?m)^\s*{re.escape(name)}\.jpg: (.*), (\S+)\s*$", pkg.copyright_text)
        if line is None:
            raise LookupError(f"{pkg.copyright_file} has no line for {name}.jpg")
        photos.append(Photo(f"tagua-{name}", pkg.tree / root / f"{name}.jpg", pkg.source, f"{root}/{name}.jpg",
                            line.group(2), line.group(1), f"from {pkg.copyright_file}: \"{line.group(0).strip()}\"",
                            domain))
    return photos


# palapeli puzzle photos (its 512² backgrounds are generated tiling textures, left out)
PALAPELI_PHOTOS = {"european-honey-bee": "nature", "panther-chameleon-female": "nature", "citrus-fruits": "other",
                   "castle-maintenon": "other", "cincinnati-bridge": "other"}


def palapeli_photos(cache: Path) -> list[Photo]:
    pkg = _package("palapeli-data", cache)
    root = "usr/share/palapeli/collection"
    return [_dep5_photo(pkg, f"palapeli-{name}", pkg.tree / root / f"{name}.jpg", f"{root}/{name}.jpg",
                        [f"puzzles/{name}.jpg"], domain) for name, domain in PALAPELI_PHOTOS.items()]


# GNOME account pictures, 512² photos (faces/legacy holds smaller ones)
GNOME_FACES = {"cat": "nature", "flower2": "nature", "hummingbird": "nature", "mountain": "nature", "tree": "nature",
               "bicycle": "other", "book": "other", "calculator": "other", "coffee2": "other", "gamepad": "other",
               "guitar2": "other", "headphones": "other", "plane": "other", "surfer": "other", "tomatoes": "other"}


def gnome_faces_photos(cache: Path) -> list[Photo]:
    pkg = _package("gnome-control-center-data", cache)
    root = "usr/share/pixmaps/faces"
    return [_dep5_photo(pkg, f"gnome-face-{name}", pkg.tree / root / f"{name}.jpg", f"{root}/{name}.jpg",
                        [f"panels/user-accounts/data/faces/{name}.jpg"], domain) for name, domain in GNOME_FACES.items()]


# package -> its photos; in download order, smallest first (sizes of the Debian 12 .debs)
V2_SOURCES = {"palapeli-data": palapeli_photos,  # 2.1 MB
              "tagua-data": tagua_photos,  # 2.3 MB
              "gnome-control-center-data": gnome_faces_photos,  # 3.6 MB
              "tuxtype-data": tuxtype_photos,  # 9.9 MB
              "lxqt-themes": lxqt_photos,  # 25.8 MB
              "gcompris-qt-data": gcompris_photos,  # 44.2 MB
              "enlightenment-data": enlightenment_photos}  # 400.6 MB

# The held-out photos of the v2 sets: detailed ones (fine texture, hard edges, animals' eyes and
# fur), from six packages, both size bands. See the module docstring.
DETAILED_HOLDOUT = ("enlightenment-Spruce-Needles", "enlightenment-Lichen-Branches", "gcompris-erase-cheetah",
                    "gcompris-erase-gorilla", "tuxtype-kcas11", "lxqt-flowers", "palapeli-european-honey-bee",
                    "gcompris-explore_world_animals-hedgehog")


def v2_photos(cache: Path, packages: tuple[str, ...] | None = None) -> list[Photo]:
    """The new Debian sources' photos (all domains), from ``packages`` (default: all of V2_SOURCES)."""
    photos: list[Photo] = []
    for pkg in packages or tuple(V2_SOURCES):
        photos += V2_SOURCES[pkg](cache)
    return photos


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.size[0] * im.size[1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def choose_holdout(entries: list[dict], n: int) -> set[str]:
    """Ids of the ``n`` held-out photos (deterministic; see the module docstring)."""
    if not 0 <= n < len(entries):
        raise ValueError(f"holdout must be in [0, {len(entries)}), got {n}")

    def ranked(group: list[dict]) -> list[str]:  # sources in turn, each in SHA-256 order of the ids
        queues: dict[str, list[str]] = {}
        for e in sorted(group, key=lambda e: hashlib.sha256(e["id"].encode()).hexdigest()):
            queues.setdefault(e["source"], []).append(e["id"])
        depth = max((len(q) for q in queues.values()), default=0)
        return [q[k] for k in range(depth) for _, q in sorted(queues.items()) if k < len(q)]

    high = [e for e in entries if min(e["width"], e["height"]) >= HIGH_RES]
    low = [e for e in entries if min(e["width"], e["height"]) < HIGH_RES]
    return set((ranked(high) + ranked(low))[:n])


SETS = ("v1", "nature", "all")


def set_photos(photo_set: str, cache: Path, debian: bool = True, packages: tuple[str, ...] | None = None) -> list[Photo]:
    """The photos of ``photo_set``: ``v1`` the original 30, ``all`` v1 plus the v2 packages', ``nature`` the
    nature-domain photos of ``all``. ``debian=False`` keeps only the PyPI photos; ``packages`` limits the
    v2 packages used (default all)."""
    if photo_set not in SETS:
        raise ValueError(f"photo set must be one of {SETS}, got {photo_set!r}")
    photos = skimage_photos() + sklearn_photos()
    if debian:
        photos += debian_photos(cache)
        if photo_set != "v1":
            photos += v2_photos(cache, packages)
    return [p for p in photos if photo_set != "nature" or p.domain == "nature"]


def build_photoset(out: Path, holdout: int | None = None, cache: Path | None = None, debian: bool = True,
                   photo_set: str = "v1", packages: tuple[str, ...] | None = None) -> list[dict]:
    """Write ``out/{train,holdout}`` + ``out/manifest.json`` + ``out/MANIFEST.md``; returns the entries.

    ``holdout``: for ``v1`` the number of photos held out by ``choose_holdout`` (default 3); for the
    v2 sets the first ``holdout`` of DETAILED_HOLDOUT that are in the set (default all of them)."""
    photos = set_photos(photo_set, cache or default_cache(), debian, packages)
    entries = []
    for p in photos:
        with Image.open(p.src) as im:
            width, height, mode = *im.size, im.mode
        entry = {k: v for k, v in asdict(p).items() if k != "src"}
        entries.append({**entry, "file": "", "split": "", "width": width, "height": height, "mode": mode,
                        "bytes": p.src.stat().st_size, "sha256": _sha256(p.src)})
    if photo_set == "v1":
        held = choose_holdout(entries, 3 if holdout is None else holdout)
    else:
        present = [i for i in DETAILED_HOLDOUT if i in {e["id"] for e in entries}]
        held = set(present[:holdout])
    for split in ("train", "holdout"):
        (out / split).mkdir(parents=True, exist_ok=True)
    wanted = set()
    for p, e in zip(photos, entries, strict=True):
        e["split"] = "holdout" if p.id in held else "train"
        e["file"] = f"{e['split']}/{p.id}{p.src.suffix.lower()}"
        dest = out / e["file"]
        wanted.add(dest)
        if not (dest.exists() and dest.stat().st_size == e["bytes"] and _sha256(dest) == e["sha256"]):
            shutil.copyfile(p.src, dest)
    for split in ("train", "holdout"):  # a photo that changed split must not stay behind in train/
        for stale in set((out / split).iterdir()) - wanted:
            stale.unlink()
    (out / "manifest.json").write_text(json.dumps({"files": entries}, indent=1, ensure_ascii=False) + "\n")
    (out / "MANIFEST.md").write_text(_markdown(entries))
    return entries


def _markdown(entries: list[dict]) -> str:
    lines = ["# Offline photo set", "",
             "Made by `python -m training.photoset` (see its docstring for what is included and why).",
             "Files are byte-for-byte copies of the originals. Holdout photos are never in `train/`.", ""]
    for split in ("train", "holdout"):
        sel = [e for e in entries if e["split"] == split]
        mp = sum(e["width"] * e["height"] for e in sel) / 1e6
        lines.append(f"- {split}: {len(sel)} files, {sum(e['bytes'] for e in sel) / 1e6:.1f} MB, {mp:.1f} megapixels")
    lines += ["", "| split | file | source | original path | size (w x h, mode) | licence | copyright / credit "
              "| note |",
              "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        cells = [e["split"], e["file"], e["source"], e["original_path"], f"{e['width']}x{e['height']} {e['mode']}",
                 e["licence"], e["copyright"], e["note"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infd" / "debs"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.photoset", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory (train/, holdout/, manifests)")
    ap.add_argument("--set", dest="photo_set", choices=SETS, default="v1",
                    help="v1: the original 30 photos (default; the shipped model's set); nature: the nature "
                         "photos of all sources (v2 training set); all: every photo of all sources")
    ap.add_argument("--holdout", type=int, default=None,
                    help="v1: number of high-res photos held out (default 3); v2 sets: the first N of the "
                         "detailed held-out photos (default all)")
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"where .deb files are unpacked (default {default_cache()})")
    ap.add_argument("--no-debian", action="store_true", help="only the scikit-image and scikit-learn photos")
    args = ap.parse_args(argv)
    entries = build_photoset(args.out, args.holdout, args.cache, debian=not args.no_debian, photo_set=args.photo_set)
    for split in ("train", "holdout"):
        sel = [e for e in entries if e["split"] == split]
        sides = [min(e["width"], e["height"]) for e in sel] or [0]
        print(f"{split}: {len(sel)} photos, {sum(e['bytes'] for e in sel) / 1e6:.1f} MB, "
              f"short sides {min(sides)}-{max(sides)} px")
    print(f"wrote {args.out / 'manifest.json'} and {args.out / 'MANIFEST.md'}")


if __name__ == "__main__":
    main()
