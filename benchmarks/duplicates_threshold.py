"""What cosine similarity separates copies of an image from distinct images of its class.

``[data] duplicate_threshold`` flags a test image as a near-duplicate of a training image
when their backbone features' cosine is at least the threshold. This benchmark measures the
two distributions the threshold must separate, on real image collections:

* **copies**: each image against altered copies of itself: re-encoded as JPEG (quality 90 and
  75), resized to 75 % and to 50 % (then JPEG), a 2-pixel border crop, and a mirrored copy
  (the last one is *not* a duplicate by the check's definition; it is reported for reference);
Images that are nearly uniform once decoded (transparent clipart whose colour channels are
black) and repeated pictures are left out: they are not distinct images.

* **distinct**: each image against its most similar *other* image of the same class (the hardest
  negatives: two photos of one bird species, two stamps of one category), and against its
  most similar other image overall.

It prints percentiles of each and, for candidate thresholds, the share of copies caught and
of images whose nearest distinct neighbour would be flagged.

    python benchmarks/duplicates_threshold.py --root /usr/share/tuxpaint/stamps --depth 2 \
        --backbone efficientnet_lite0 --input-size 96 --limit 600
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grappa_cli.data.images import load_rgb
from grappa_cli.data.transforms import eval_transform
from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def resized(img: Image.Image, factor: float, quality: int = 90) -> Image.Image:
    w, h = img.size
    small = img.resize((max(8, round(w * factor)), max(8, round(h * factor))), Image.Resampling.BICUBIC)
    return jpeg(small, quality)


COPIES = {
    "jpeg q90": lambda im: jpeg(im, 90),
    "jpeg q75": lambda im: jpeg(im, 75),
    "resize 75% + jpeg": lambda im: resized(im, 0.75),
    "resize 50% + jpeg": lambda im: resized(im, 0.5),
    "crop 2% border": lambda im: im.crop((im.size[0] // 50, im.size[1] // 50, im.size[0] - im.size[0] // 50,
                                          im.size[1] - im.size[1] // 50)),
    "mirrored (not a copy)": ImageOps.mirror,
}


def collect(root: Path, depth: int, limit: int, seed: int) -> list[tuple[Path, str]]:
    files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in EXTENSIONS]
    labelled = [(p, "/".join(p.relative_to(root).parts[:depth])) for p in files]
    random.Random(seed).shuffle(labelled)
    return labelled[:limit]


@torch.no_grad()
def embed(backbone, transform, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([transform(im) for im in images[i:i + batch]])
        out.append(backbone(x).float())
    z = torch.cat(out)
    return torch.nn.functional.normalize(z, dim=1).numpy()


def percentiles(values: np.ndarray) -> str:
    q = np.percentile(values, [0, 1, 5, 50, 95, 99, 100])
    return " ".join(f"{v:.3f}" for v in q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", required=True)
    parser.add_argument("--depth", type=int, default=1, help="folder levels that name the class")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--limit", type=int, default=600, help="images per root")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")

    backbone = build_backbone(BackboneSpec(name=args.backbone, pretrained=True, input_size=args.input_size))
    backbone.eval()
    transform = eval_transform(backbone.data_config)
    items = [item for root in args.root for item in collect(root, args.depth, args.limit, args.seed)]
    originals, kept, seen = [], [], set()
    for path, label in items:
        try:
            image = load_rgb(str(path))
            if min(image.size) < 16:  # icons too small to resize meaningfully
                continue
            pixels = np.asarray(image.resize((64, 64)))
            if pixels.std() < 10:  # nearly uniform once the alpha channel is dropped (black on black)
                continue
            digest = hashlib.sha256(pixels.tobytes()).hexdigest()
            if digest in seen:  # the same picture twice in the collection: one of them is enough
                continue
            seen.add(digest)
            originals.append(image)
            kept.append((path, label))
        except Exception:  # unreadable or oversized files are skipped, as extract does
            continue
    items = kept
    labels = np.array([label for _, label in items])
    base = embed(backbone, transform, originals)
    print(f"{len(items)} images, {len(set(labels))} classes; backbone {args.backbone} at {args.input_size}px; "
          f"torch threads {torch.get_num_threads()}")
    print("percentiles:                 min    1%     5%     50%    95%    99%    max")
    copies = {}
    for name, make in COPIES.items():
        z = embed(backbone, transform, [make(im) for im in originals])
        copies[name] = np.sum(base * z, axis=1)
        print(f"copy  {name:22s} {percentiles(copies[name])}")
    sims = base @ base.T
    np.fill_diagonal(sims, -np.inf)
    identical = np.isclose(sims, 1.0, atol=1e-6)  # byte-identical files inside a collection
    sims_distinct = np.where(identical, -np.inf, sims)
    same = labels[:, None] == labels[None, :]
    nearest_same = np.where(same, sims_distinct, -np.inf).max(axis=1)
    nearest_same = nearest_same[np.isfinite(nearest_same)]
    nearest_any = sims_distinct.max(axis=1)
    print(f"distinct nearest same class    {percentiles(nearest_same)}")
    print(f"distinct nearest any           {percentiles(nearest_any)}")
    print(f"pairs with identical features left (cos 1, skipped as negatives): {int(identical.sum()) // 2}")
    print()
    dup_names = [n for n in COPIES if not n.startswith("mirrored")]
    header = "threshold  " + "  ".join(f"{n[:14]:>14s}" for n in dup_names) + "   flagged distinct (same class / any)"
    print(header)
    for t in (0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98):
        caught = "  ".join(f"{100 * np.mean(copies[n] >= t):13.1f}%" for n in dup_names)
        same, any_class = 100 * np.mean(nearest_same >= t), 100 * np.mean(nearest_any >= t)
        print(f"{t:9.2f}  {caught}   {same:5.2f}% / {any_class:5.2f}%")


if __name__ == "__main__":
    main()
