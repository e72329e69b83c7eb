"""``noisy``: the measurements behind docs/noisy_data.md and BENCHMARKS' cleaning cost.

- ``noisy make OUT``: facetrain's synthetic faces with noise put where it is known (identities split in two labels,
  identities made of validation people, 10% of the images given another label, exact copies within and across
  identities): ``OUT/rec``, ``OUT/synthetic_val.bin`` and ``OUT/truth.json``;
- ``noisy score OUT CLEAN_DIR``: precision and recall of a ``clean_dataset.py`` report against ``truth.json``;
- ``noisy cost DATASET``: the cleaning's costs that grow with the data (decode, pixel hash, duplicate sets of 5.18 M
  hashes, one-person pairs of 4,096 to 16,384 centres), one thread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from facetrain.curation.duplicates import duplicate_sets
from facetrain.curation.features import pixel_hash
from facetrain.curation.similarity import similar_pairs
from facetrain.data.datasets import RecordDataset
from facetrain.data.recordio import unpack_record, write_insightface_folder
from facetrain.data.synthetic import _TRAIN, _VAL, SyntheticSpec, ensure_synthetic, render_identity

MS1MV3_IMAGES = 5_179_510


def make(out: Path, identities: int = 60, per_identity: int = 16, seed: int = 0) -> dict:
    """Write the noisy set (see the module docstring); returns the truth."""
    spec = SyntheticSpec(num_classes=identities, images_per_class=per_identity, val_identities=60,
                         val_images_per_identity=5, val_pairs=1000, seed=seed)
    shutil.copy(ensure_synthetic(spec, str(out / "synthetic")) / "synthetic_val.bin", out / "synthetic_val.bin")
    rng = np.random.default_rng(7)
    samples = [[k, data, k] for k in range(identities) for data in render_identity(seed, _TRAIN, k, per_identity)]
    next_label, split, copied = identities, [], []
    for k in range(5):  # one person under two labels: the second half of identity k gets a new label
        split.append((k, next_label))
        for sample in [s for s in samples if s[0] == k][per_identity // 2:]:
            sample[0] = next_label
        next_label += 1
    for person in range(5):  # validation people, other images of them than the .bin holds
        copied.append(next_label)
        samples += [[next_label, data, 1000 + person] for data in render_identity(seed, _VAL, person, 17)[5:]]
        next_label += 1
    for index in rng.choice(len(samples), size=len(samples) // 10, replace=False).tolist():
        other = int(rng.integers(next_label - 1))
        samples[index][0] = other + (other >= samples[index][0])
    copies = [[samples[i][0], samples[i][1], samples[i][2]] for i in rng.choice(len(samples), 20, replace=False)]
    for i in rng.choice(len(samples), 10, replace=False):
        other = int(rng.integers(next_label - 1))
        copies.append([other + (other >= samples[i][0]), samples[i][1], samples[i][2]])
    samples += copies
    order = sorted(range(len(samples)), key=lambda i: (samples[i][0], i))
    write_insightface_folder(out / "rec", ((samples[i][0], samples[i][1]) for i in order), next_label)
    truth = {"labels": [samples[i][0] for i in order], "person": [samples[i][2] for i in order],
             "one_person": split, "from_evaluation": copied}
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def _precision_recall(found: set, true: set) -> dict:
    hits = len(found & true)
    return {"flagged": len(found), "true": len(true), "precision": round(hits / len(found), 3) if found else None,
            "recall": round(hits / len(true), 3) if true else None}


def score(out: Path, clean: Path) -> dict:
    """Each check of ``clean/report.json`` against ``out/truth.json``."""
    truth, report = json.loads((out / "truth.json").read_text()), json.loads((clean / "report.json").read_text())
    labels, person = truth["labels"], truth["person"]
    major = {label: Counter(p for l, p in zip(labels, person) if l == label).most_common(1)[0][0] for label in set(labels)}
    flagged = {reason: set(indices) for reason, indices in report["flagged"].items()}
    dataset = RecordDataset(out / "rec")
    groups: dict[bytes, list[int]] = {}
    for i in range(len(dataset)):
        groups.setdefault(unpack_record(dataset.reader.read(int(dataset.keys[i])))[1], []).append(i)
    copies = [g for g in groups.values() if len(g) > 1]
    duplicates = flagged.get("duplicate_within", set()) | flagged.get("duplicate_across", set())
    return {
        "outliers": _precision_recall(flagged.get("outlier", set()),
                                      {i for i, (l, p) in enumerate(zip(labels, person)) if p != major[l]}),
        "duplicates": {"flagged": len(duplicates), "in a set of copies": len(duplicates & {i for g in copies for i in g}),
                       "sets": len(copies), "sets with all but one flagged": sum(len(set(g) & duplicates) == len(g) - 1 for g in copies)},
        "one_person": _precision_recall({tuple(p["identities"]) for p in report["merge_pairs"]},
                                        {tuple(p) for p in truth["one_person"]}),
        "overlap": _precision_recall({o["identity"] for o in report["overlap"]}, set(truth["from_evaluation"])),
    }


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return round(time.perf_counter() - start, 3)


def cost(root: Path) -> dict:
    """The measured costs (see the module docstring)."""
    torch.set_num_threads(1)
    dataset = RecordDataset(root)
    images = []
    decode = _seconds(lambda: images.extend(dataset.load(i)[0] for i in range(len(dataset))))
    hashing = _seconds(lambda: [pixel_hash(image) for image in images])
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(MS1MV3_IMAGES, 2), dtype=np.int64).astype(np.uint64)
    hashes[1::1000] = hashes[::1000][: len(hashes[1::1000])]
    result = {"images": len(dataset), "decode_ms_per_image": round(1000 * decode / len(dataset), 3),
              "hash_ms_per_image": round(1000 * hashing / len(dataset), 3),
              "duplicate_sets_s_for_5179510": _seconds(lambda: duplicate_sets(hashes, np.ones(len(hashes), bool)))}
    for count in (4096, 8192, 16384):
        centres = rng.normal(size=(count, 512)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        result[f"one_person_pairs_s_for_{count}"] = _seconds(lambda: similar_pairs(centres, 0.4))
    return result


def run_noisy(args: argparse.Namespace) -> None:
    if args.action == "make":
        args.paths[0].mkdir(parents=True, exist_ok=True)
        truth = make(args.paths[0])
        print(json.dumps({"images": len(truth["labels"]), "labels": len(set(truth["labels"]))}))
    elif args.action == "score":
        print(json.dumps(score(*args.paths[:2]), indent=1))
    else:
        print(json.dumps(cost(args.paths[0]), indent=1))


def add_noisy_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("noisy", help="noisy synthetic data with known noise, scoring a cleaning, its cost")
    parser.add_argument("action", choices=("make", "score", "cost"))
    parser.add_argument("paths", type=Path, nargs="+", help="make OUT | score OUT CLEAN_DIR | cost DATASET")
    parser.set_defaults(run=run_noisy)
