"""MS-COCO and Flickr30K image-text retrieval on Karpathy's splits.

``dataset_coco.json`` / ``dataset_flickr30k.json`` list every image with its split
(``train``, ``restval``, ``val``, ``test``) and its captions. A sample is one
(image, caption) pair; its label is the pair id, i.e. the image's index in the split,
which evaluation uses to score five captions per image. Training uses ``train`` plus
``restval`` (113,287 COCO images; 29,000 Flickr30K), testing uses ``test`` (5,000 COCO
images, the "5k" protocol; 1,000 Flickr30K). Each image keeps its first five captions.

Partition pseudo-label (retrieval has no classes): k-means cluster of each image's
caption words (TF-IDF, random projection to 64 dimensions), so that
``retrieval-partition=dirichlet-cluster`` gives clients topic-skewed images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.lazy import SampleTable
from mpsl_flwr.data.loaders.common import DatasetSpec, Files, Listed, Parsed

CAPTIONS_PER_IMAGE = 5
SPLITS = {"train": ("train", "restval"), "test": ("test",)}
COCO_LAYOUT = """
<data-dir>/
  dataset_coco.json                      (Karpathy splits)
  train2014/COCO_train2014_<id>.jpg      (COCO 2014 train images)
  val2014/COCO_val2014_<id>.jpg          (COCO 2014 val images)
"""
FLICKR_LAYOUT = """
<data-dir>/
  dataset_flickr30k.json                 (Karpathy splits)
  flickr30k-images/<id>.jpg
"""


def _captions(entry: dict) -> list[str]:
    out = []
    for sentence in entry.get("sentences", [])[:CAPTIONS_PER_IMAGE]:
        raw = sentence.get("raw") or " ".join(sentence.get("tokens", []))
        out.append(" ".join(str(raw).split()))
    return out


def _parse(
    root: Path, missing_files: MissingFiles, name: str, layout: str, json_name: str, image_dir
) -> Parsed:
    files = Files(name, layout, root, missing_files)
    path = files.file(json_name)
    data = files.json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise files.malformed(path, "want an object with a non-empty 'images' list")
    tables = {}
    for split, accepted in SPLITS.items():
        media: list[Path] = []
        listed: list[Listed] = []
        media_of: list[int] = []
        texts: list[str] = []
        for k, entry in enumerate(images):
            if not isinstance(entry, dict) or "filename" not in entry or "split" not in entry:
                raise files.malformed(path, f"image entry without 'filename'/'split': {entry!r}")
            if entry["split"] not in accepted:
                continue
            captions = _captions(entry)
            if not captions:
                raise files.malformed(path, f"image {entry['filename']} has no captions")
            media_of += [len(media)] * len(captions)
            texts += captions
            media.append(image_dir(files, entry))
            listed.append(Listed(str(entry["filename"]), f"{path.name} image {k}"))
        table = SampleTable(
            labels=np.array(media_of, dtype=np.int64),
            media=tuple(media),
            media_of=np.array(media_of, dtype=np.int64),
            media_kind="image",
            texts=tuple(texts),
        )
        table = files.check_media(table, split, "images", listed)
        # A pair id is the image's index in the split: renumber after any left out.
        tables[split] = dataclasses.replace(table, labels=table.media_of.copy())
    return Parsed((), tables["train"], tables["test"])


def _coco_image(files: Files, entry: dict) -> Path:
    return files.root / entry.get("filepath", "") / entry["filename"]


def _flickr_image(files: Files, entry: dict) -> Path:
    return files.root / "flickr30k-images" / entry["filename"]


def parse_coco(root: Path, missing_files: MissingFiles) -> Parsed:
    return _parse(root, missing_files, "mscoco", COCO_LAYOUT, "dataset_coco.json", _coco_image)


def parse_flickr(root: Path, missing_files: MissingFiles) -> Parsed:
    return _parse(
        root, missing_files, "flickr30k", FLICKR_LAYOUT, "dataset_flickr30k.json", _flickr_image
    )


def caption_clusters(table: SampleTable, clusters: int, seed: int) -> np.ndarray:
    """Per-sample pseudo-label: k-means cluster of the sample's image's caption words."""
    assert table.texts is not None
    groups = np.asarray(table.media_of)
    words = [t.lower().split() for t in table.texts]
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for ws in words for w in ws), dtype=np.int64)
    owner = np.repeat(groups, [len(ws) for ws in words])
    num_groups = int(groups.max()) + 1
    # Inverse document frequency over images, then a sparse-times-random projection.
    pairs = np.unique(owner * len(vocab) + ids)
    df = np.bincount(pairs % len(vocab), minlength=len(vocab))
    idf = np.log((1 + num_groups) / (1 + df)).astype(np.float32) + 1.0
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((len(vocab), 64)).astype(np.float32)
    feats = np.zeros((num_groups, 64), dtype=np.float32)
    np.add.at(feats, owner, idf[ids, None] * proj[ids])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    return kmeans(feats, clusters, seed)[groups]


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
    """Cluster index of each row of ``x`` (k-means++ start, Lloyd iterations)."""
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    dist = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
        dist = np.minimum(dist, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    assign = np.zeros(len(x), dtype=np.int64)
    for _ in range(iterations):
        d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        assign = d.argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return assign


MSCOCO = DatasetSpec(
    "mscoco",
    "retrieval",
    ("image", "text"),
    COCO_LAYOUT,
    parse_coco,
    image_size=224,
    text_length=32,
    proxy_labels=caption_clusters,
)
FLICKR30K = DatasetSpec(
    "flickr30k",
    "retrieval",
    ("image", "text"),
    FLICKR_LAYOUT,
    parse_flickr,
    image_size=224,
    text_length=32,
    proxy_labels=caption_clusters,
)
