"""Assemble the offline photo set: real photos that install from PyPI and Debian.

    python -m training.photoset --out runs/photoset [--holdout 3] [--cache DIR] [--no-debian]

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

The .deb files are fetched with ``apt-get download`` (``apt-get update`` is run only if that
fails) and unpacked with ``dpkg -x`` into a cache directory, never installed; a re-run reuses
the cache. Licences are recorded per file: scikit-image's from its ``skimage.data`` docstrings,
scikit-learn's from ``sklearn/datasets/images/README.txt``, the Debian ones from the package's
``usr/share/doc/PKG/copyright`` (DEP-5, last matching ``Files:`` paragraph) plus, for Plasma,
the per-wallpaper ``metadata.json`` licence and author, which differ from the copyright file.

``N`` photos are held out (``DIR/holdout``, never in ``DIR/train``), chosen deterministically:
photos with a short side of at least 1024 px first, taking the sources in turn (by name), each
source's photos in the order of the SHA-256 of their ids; then the smaller photos likewise.
``manifest.json`` and ``MANIFEST.md`` list every file.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from PIL import Image

__all__ = ["Photo", "skimage_photos", "sklearn_photos", "debian_photos", "build_photoset", "main"]

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


def skimage_photos() -> list[Photo]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [Photo(f"skimage-{Path(name).stem}", root / name, f"PyPI scikit-image {version('scikit-image')}",
                  f"skimage/data/{name}", licence, credit, "licence as stated in the skimage.data docstring")
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
                            "sklearn/datasets/images/README.txt: " + " | ".join(block.splitlines())))
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
                                    f"licence and copyright from {copyright_file}"))
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
                                    f"{root}/{name}/metadata.json says License: {meta.get('License', '?')}"))
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


def build_photoset(out: Path, holdout: int = 3, cache: Path | None = None, debian: bool = True) -> list[dict]:
    """Write ``out/{train,holdout}`` + ``out/manifest.json`` + ``out/MANIFEST.md``; returns the entries."""
    photos = skimage_photos() + sklearn_photos()
    if debian:
        photos += debian_photos(cache or default_cache())
    entries = []
    for p in photos:
        with Image.open(p.src) as im:
            width, height, mode = *im.size, im.mode
        entry = {k: v for k, v in asdict(p).items() if k != "src"}
        entries.append({**entry, "file": "", "split": "", "width": width, "height": height, "mode": mode,
                        "bytes": p.src.stat().st_size, "sha256": _sha256(p.src)})
    held = choose_holdout(entries, holdout)
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
    ap.add_argument("--holdout", type=int, default=3, help="number of high-res photos held out (default 3)")
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"where .deb files are unpacked (default {default_cache()})")
    ap.add_argument("--no-debian", action="store_true", help="only the scikit-image and scikit-learn photos")
    args = ap.parse_args(argv)
    entries = build_photoset(args.out, args.holdout, args.cache, debian=not args.no_debian)
    for split in ("train", "holdout"):
        sel = [e for e in entries if e["split"] == split]
        sides = [min(e["width"], e["height"]) for e in sel] or [0]
        print(f"{split}: {len(sel)} photos, {sum(e['bytes'] for e in sel) / 1e6:.1f} MB, "
              f"short sides {min(sides)}-{max(sides)} px")
    print(f"wrote {args.out / 'manifest.json'} and {args.out / 'MANIFEST.md'}")


if __name__ == "__main__":
    main()
