"""Evaluation on your own data: pair lists (LFW's pairs.txt and plain lists) through scripts/evaluate.py,
scripts/make_bin.py, several checkpoints in one table, the feature cache, and scripts/identify.py on identity
folders and on TinyFace's layout; bad input as one line."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facetrain.data.images import decode_image, encode_jpeg, resize_square
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.data.transforms import normalize
from facetrain.data.verification_bin import load_verification_bin
from facetrain.eval.pairs import read_pairs
from facetrain.eval.verification import evaluate
from tests.eval_helpers import load_script, write_checkpoint
from tests.test_identification import brute_force

evaluate_script = load_script("evaluate")
make_bin = load_script("make_bin")
identify = load_script("identify")
pytestmark = pytest.mark.usefixtures("one_thread")
PEOPLE, SHOTS = 6, 3


def shot(face: np.ndarray, n: int) -> np.ndarray:
    """Image n of a person: the face moved by a few pixels."""
    return np.roll(face, (n % 3, (2 * n) % 5), axis=(0, 1))


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> dict:
    """``lfw/<name>/<name>_000n.jpg`` (6 people, 3 images each) as LFW names its images, and two checkpoints."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    faces = [render_face(sample_identity(rng), rng) for _ in range(PEOPLE)]
    names = [f"Person_{chr(65 + p)}" for p in range(PEOPLE)]
    for name, face in zip(names, faces):
        (root / "lfw" / name).mkdir(parents=True)
        for n in range(1, SHOTS + 1):
            (root / "lfw" / name / f"{name}_{n:04d}.jpg").write_bytes(encode_jpeg(shot(face, n)))
    models = [write_checkpoint(root / f"model{i}.pt", calibrate=np.stack(faces), seed=i) for i in (0, 1)]
    return {"root": root, "images": root / "lfw", "names": names, "faces": faces, "models": models}


def lfw_pairs(people: dict, folds: int = 10) -> tuple[str, list[tuple[str, str]], list[bool]]:
    """A pairs.txt by LFW's rule ('<folds> <n>' then per fold n matched and n mismatched lines), n = 1,
    and the image paths and labels it stands for."""
    names, lines, paths, same = people["names"], [f"{folds}\t1"], [], []
    for fold in range(folds):
        a, b = names[fold % PEOPLE], names[(fold + 1) % PEOPLE]
        i, j = fold % SHOTS + 1, (fold + 1) % SHOTS + 1
        lines += [f"{a}\t{i}\t{j}", f"{a}\t{i}\t{b}\t{j}"]
        paths += [(f"{a}/{a}_{i:04d}.jpg", f"{a}/{a}_{j:04d}.jpg"), (f"{a}/{a}_{i:04d}.jpg", f"{b}/{b}_{j:04d}.jpg")]
        same += [True, False]
    return "\n".join(lines) + "\n", paths, same


def expected(model: torch.nn.Module, folder: Path, paths: list[tuple[str, str]], same: list[bool]) -> dict:
    images = np.stack([decode_image((folder / p).read_bytes()) for pair in paths for p in pair])
    batch = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        embeddings = model(batch) + model(batch.flip(3))
    return evaluate(embeddings.numpy(), np.array(same))


def run_evaluate(*argv: str) -> int:
    return evaluate_script.main([*argv, "--device", "cpu", "--workers", "0", "--batch-size", "8", "--no-progress"])


def test_lfw_pairs_file_is_read_by_its_rule(people, tmp_path):
    text, paths, same = lfw_pairs(people)
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_pairs(tmp_path / "pairs.txt", people["images"])
    assert pairs.names == [p for pair in paths for p in pair] and pairs.issame.tolist() == same


def test_pair_lists_through_evaluate(people, tmp_path, capsys):
    text, paths, same = lfw_pairs(people)
    (tmp_path / "pairs.txt").write_text(text)
    plain = "# path1 path2 same\n" + "".join(f"{a}\t{b}\t{'true' if s else 'false'}\n" for (a, b), s in zip(paths, same))
    (tmp_path / "mine.txt").write_text(plain)
    out = tmp_path / "results.json"
    assert run_evaluate(str(people["root"] / "model0.pt"), "--pairs", str(tmp_path / "pairs.txt"),
                        str(tmp_path / "mine.txt"), "--images", str(people["images"]), "--json", str(out)) == 0
    targets = json.loads(out.read_text())["models"][0]["targets"]
    reference = expected(people["models"][0], people["images"], paths, same)
    for name in ("pairs", "mine"):
        result = dict(targets[name])
        assert result.pop("pairs") == 20 and result.pop("tar_at_far") == reference["tar_at_far"]
        assert result == pytest.approx({k: v for k, v in reference.items() if k != "tar_at_far"})
    assert targets["pairs"]["accuracy"] > 0.5
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["target", "pairs", "mine"]


def test_make_bin_round_trip(people, tmp_path, capsys):
    text, paths, same = lfw_pairs(people)
    (tmp_path / "pairs.txt").write_text(text)
    big = tmp_path / "odd"  # an image of another size is stored resized, as PNG
    (big / "Person_A").mkdir(parents=True)
    face = decode_image((people["images"] / paths[0][0]).read_bytes())
    (big / "Person_A" / "big.jpg").write_bytes(encode_jpeg(np.repeat(np.repeat(face, 2, 0), 2, 1)))
    (big / "odd.txt").write_text(f"Person_A/big.jpg\t{people['images'] / paths[0][1]}\t1\n")
    assert make_bin.main([str(tmp_path / "pairs.txt"), "--images", str(people["images"]),
                          "--output", str(tmp_path / "mine.bin")]) == 0
    assert "20 pairs (10 same)" in capsys.readouterr().err
    loaded = load_verification_bin(tmp_path / "mine.bin")
    images, issame = loaded.pair_images(), loaded.issame
    assert issame.tolist() == same
    for image, name in zip(images, [p for pair in paths for p in pair]):  # stored byte for byte
        np.testing.assert_array_equal(image, decode_image((people["images"] / name).read_bytes()))
    out = tmp_path / "r.json"
    assert run_evaluate(str(people["root"] / "model0.pt"), "--targets", str(tmp_path / "mine.bin"),
                        "--pairs", str(tmp_path / "pairs.txt"), "--images", str(people["images"]), "--json", str(out)) == 0
    targets = json.loads(out.read_text())["models"][0]["targets"]
    assert targets["mine"].pop("tar_at_far") == targets["pairs"].pop("tar_at_far")
    assert targets["mine"] == pytest.approx(targets["pairs"])

    assert make_bin.main([str(big / "odd.txt"), "--output", str(tmp_path / "odd.bin")]) == 0
    loaded = load_verification_bin(tmp_path / "odd.bin")
    odd = loaded.pair_images()
    assert odd.shape == (2, 112, 112, 3)
    np.testing.assert_array_equal(odd[0], resize_square(decode_image((big / "Person_A" / "big.jpg").read_bytes()), 112))


def test_several_checkpoints_make_one_table_and_share_the_cache(people, tmp_path, capsys, monkeypatch):
    text, paths, same = lfw_pairs(people)
    (tmp_path / "pairs.txt").write_text(text)
    (tmp_path / "half.txt").write_text("".join(f"{a} {b} {int(s)}\n" for (a, b), s in list(zip(paths, same))[:12]))
    models = [str(people["root"] / f"model{i}.pt") for i in (0, 1)]
    argv = [*models, "--pairs", str(tmp_path / "pairs.txt"), str(tmp_path / "half.txt"), "--images",
            str(people["images"]), "--json", str(tmp_path / "out" / "r.json"), "--csv", str(tmp_path / "out" / "r.csv")]
    assert run_evaluate(*argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["| model | pairs | half | mean |", "|---|---:|---:|---:|"]
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert [m["model"] for m in report["models"]] == ["model0.pt", "model1.pt"]
    for line, model, index in zip(lines[2:], report["models"], (0, 1)):
        accuracy = {name: model["targets"][name]["accuracy"] for name in ("pairs", "half")}
        assert accuracy["pairs"] == pytest.approx(expected(people["models"][index], people["images"], paths, same)["accuracy"])
        assert line == (f"| {model['model']} | {100 * accuracy['pairs']:.2f} | {100 * accuracy['half']:.2f} | "
                        f"{50 * (accuracy['pairs'] + accuracy['half']):.2f} |")
    rows = list(csv.DictReader((tmp_path / "out" / "r.csv").open()))
    assert [row["model"] for row in rows] == ["model0.pt", "model1.pt"]
    assert float(rows[1]["half_accuracy"]) == report["models"][1]["targets"]["half"]["accuracy"]
    assert len(list((tmp_path / "out").glob("features_*.npy"))) == 4  # 2 checkpoints x 2 lists

    import facetrain.eval.targets as targets

    def no_network(*args, **kwargs):
        raise AssertionError("embedded again")

    monkeypatch.setattr(targets, "embed_files", no_network)
    monkeypatch.setattr(evaluate_script, "load_backbone", no_network)
    assert run_evaluate(*argv) == 0
    assert capsys.readouterr().out.splitlines() == lines
    with pytest.raises(AssertionError, match="embedded again"):
        run_evaluate(*argv, "--no-cache")


@pytest.mark.parametrize("line, message", [
    ("Person_A/Person_A_0001.jpg Person_B/Person_B_0001.jpg maybe", "mine.txt:2: 'Person_A/Person_A_0001.jpg Person_B"),
    ("Person_A/Person_A_0001.jpg Person_A/none.jpg 1", "mine.txt:2: image"),
])
def test_bad_pair_lists_name_file_and_line(people, tmp_path, capsys, line, message):
    (tmp_path / "mine.txt").write_text(f"Person_A/Person_A_0001.jpg Person_A/Person_A_0002.jpg 1\n{line}\n")
    for run in (lambda: run_evaluate(str(people["root"] / "model0.pt"), "--pairs", str(tmp_path / "mine.txt"),
                                     "--images", str(people["images"]), "--json", str(tmp_path / "r.json")),
                lambda: make_bin.main([str(tmp_path / "mine.txt"), "--images", str(people["images"]),
                                       "--output", str(tmp_path / "m.bin")])):
        assert run() == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob("*.bin"))


def test_lfw_header_that_disagrees_is_refused(people, tmp_path, capsys):
    text, _, _ = lfw_pairs(people)
    (tmp_path / "pairs.txt").write_text(text.replace("10\t1", "10\t2", 1))
    assert run_evaluate(str(people["root"] / "model0.pt"), "--pairs", str(tmp_path / "pairs.txt"),
                        "--images", str(people["images"])) == 2
    assert "the header announces 40 pairs but 20 follow" in capsys.readouterr().err


def test_unreadable_image_stops_evaluation_and_make_bin(people, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "a" / "1.jpg").write_bytes(encode_jpeg(people["faces"][0]))
    (images / "a" / "2.jpg").write_bytes(b"not an image")
    (tmp_path / "mine.txt").write_text("a/1.jpg a/2.jpg 1\n")
    assert run_evaluate(str(people["root"] / "model0.pt"), "--pairs", str(tmp_path / "mine.txt"), "--images", str(images),
                        "--json", str(tmp_path / "r.json")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2.jpg cannot be decoded" in err
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob("features_*"))
    assert make_bin.main([str(tmp_path / "mine.txt"), "--images", str(images), "--output", str(tmp_path / "m.bin")]) == 2
    assert "2.jpg cannot be decoded" in capsys.readouterr().err and not list(tmp_path.glob("*m.bin*"))


# ---- identification on folders ------------------------------------------------------------------------------
def write_folder(root: Path, people: dict, who: dict[str, list[int]]) -> Path:
    for name, shots in who.items():
        (root / name).mkdir(parents=True)
        for n in shots:
            source = people["images"] / name / f"{name}_{n:04d}.jpg"
            (root / name / source.name).write_bytes(source.read_bytes())
    return root


def reference_features(model: torch.nn.Module, files: list[Path]) -> np.ndarray:
    batch = normalize(torch.from_numpy(np.stack([decode_image(f.read_bytes()) for f in files])).permute(0, 3, 1, 2))
    with torch.no_grad():
        return (model(batch) + model(batch.flip(3))).numpy()


def run_identify(*argv: str) -> int:
    return identify.main([*argv, "--device", "cpu", "--workers", "0", "--batch-size", "8", "--no-progress"])


@pytest.mark.parametrize("enrol", ["images", "mean"])
def test_identify_folders(people, tmp_path, capsys, enrol):
    names = people["names"]
    gallery = write_folder(tmp_path / "gallery", people, {n: [1, 2] for n in names[:4]})
    probe = write_folder(tmp_path / "probe", people, {n: [3] for n in names})  # the last two are not enrolled
    distractors = write_folder(tmp_path / "others", people, {names[4]: [1]})  # of a non-mated probe's face
    out = tmp_path / "out"
    assert run_identify(str(people["root"] / "model0.pt"), "--gallery", str(gallery), "--probe", str(probe),
                        "--distractors", str(distractors), "--enrol", enrol, "--ranks", "1", "2",
                        "--fpirs", "0.5", "1", "--output", str(out)) == 0
    report = json.loads((out / "identification.json").read_text())
    gallery_files = sorted(gallery.rglob("*.jpg"))
    probe_files = sorted(probe.rglob("*.jpg"))
    feats = reference_features(people["models"][0], probe_files + gallery_files + [distractors / names[4] / f"{names[4]}_0001.jpg"])
    probe_feats, gallery_feats = feats[: len(probe_files)], feats[len(probe_files):]
    gallery_ids = np.array([f.parent.name for f in gallery_files] + [""])
    if enrol == "mean":
        unit = gallery_feats / np.linalg.norm(gallery_feats, axis=1, keepdims=True)
        gallery_feats = np.stack([unit[gallery_ids == n].mean(0) for n in names[:4]] + [unit[-1]])
        gallery_ids = np.array(names[:4] + [""])
    ranks, mate_scores, tops = brute_force(probe_feats, np.array([f.parent.name for f in probe_files]), gallery_feats,
                                           gallery_ids)
    assert report["probes"] == 6 and report["mated_probes"] == 4 and report["gallery_entries"] == len(gallery_ids)
    assert report["distractors"] == 1 and report["enrol"] == enrol
    assert report["rank"] == {"1": pytest.approx((ranks[:4] == 1).mean()), "2": pytest.approx((ranks[:4] <= 2).mean())}
    # FPIR 1 allows both non-mated probes to raise a false alarm (no threshold), 0.5 one of them
    assert report["tpir_at_fpir"]["1"] == report["rank"]["1"]
    threshold = np.nextafter(tops[4:].min(), np.inf)
    assert report["tpir_at_fpir"]["0.5"] == pytest.approx(((ranks[:4] == 1) & (mate_scores[:4] >= threshold)).mean())
    for png in ("identification_cmc.png", "identification_tpir.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"identification: 6 probes (4 mated), {len(gallery_ids)} gallery entries"
    assert table[1].split() == ["rank-1", "rank-2", "TPIR@FPIR=0.5", "TPIR@FPIR=1"]


def test_identify_tinyface_layout(people, tmp_path, capsys):
    """TinyFace's file names ('<identity>_<n>.jpg'), tiny crops resized to 112x112, distractors in the gallery."""
    root = tmp_path / "Testing_Set"
    for folder in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (root / folder).mkdir(parents=True)
    for p, face in enumerate(people["faces"][:4]):
        for folder, n in (("Gallery_Match", 1), ("Probe", 2)):
            tiny = resize_square(shot(face, n), 24)
            (root / folder / f"{p + 1}_{n}.jpg").write_bytes(encode_jpeg(tiny, quality=100))
    for d, face in enumerate(people["faces"][4:]):
        (root / "Gallery_Distractor" / f"{d}.jpg").write_bytes(encode_jpeg(resize_square(face, 24), quality=100))
    out = tmp_path / "out"
    assert run_identify(str(people["root"] / "model0.pt"), "--tinyface", str(root), "--output", str(out)) == 0
    report = json.loads((out / "tinyface.json").read_text())
    assert report["probes"] == report["mated_probes"] == 4 and report["distractors"] == 2
    assert list(report["rank"]) == ["1", "5", "20"] and report["rank"]["20"] == 1.0
    assert set(report["tpir_at_fpir"].values()) == {None}  # every probe is mated
    assert (out / "tinyface_cmc.png").is_file() and not (out / "tinyface_tpir.png").exists()
    files = [root / "Probe" / f"{p}_2.jpg" for p in range(1, 5)] + [root / "Gallery_Match" / f"{p}_1.jpg" for p in range(1, 5)]
    files += sorted((root / "Gallery_Distractor").iterdir())
    cached = np.load(next(out.glob("features_*.npy")))
    images = np.stack([resize_square(decode_image(f.read_bytes()), 112) for f in files])
    batch = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        reference = (people["models"][0](batch) + people["models"][0](batch.flip(3))).numpy()
    np.testing.assert_allclose(cached, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage, message", [
    (lambda g: (g / "Person_Z").mkdir(), "gallery identity {g}/Person_Z holds no images; add its images or remove the folder"),
    (lambda g: (g / "loose.jpg").write_bytes(b"x"), "{g}/loose.jpg is not in an identity folder"),
    (lambda g: (g / "Person_A" / "Person_A_0001.jpg").write_bytes(b"broken"), "Person_A_0001.jpg cannot be decoded"),
])
def test_identify_bad_folders_are_one_line(people, tmp_path, capsys, damage, message):
    gallery = write_folder(tmp_path / "gallery", people, {n: [1] for n in people["names"][:2]})
    probe = write_folder(tmp_path / "probe", people, {n: [2] for n in people["names"][:2]})
    damage(gallery)
    out = tmp_path / "out"
    assert run_identify(str(people["root"] / "model0.pt"), "--gallery", str(gallery), "--probe", str(probe),
                        "--output", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("identify: error: ") and message.format(g=gallery) in err, err
    assert not out.exists()


def test_identify_refuses_a_tinyface_folder_of_another_layout(people, tmp_path, capsys):
    (tmp_path / "Probe").mkdir()
    assert run_identify(str(people["root"] / "model0.pt"), "--tinyface", str(tmp_path)) == 2
    assert "is not TinyFace's test split (no Gallery_Match, Gallery_Distractor folder)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_identify(str(people["root"] / "model0.pt"), "--gallery", str(tmp_path))
    assert exit_info.value.code == 2 and "identify: error: --gallery and --probe go together" in capsys.readouterr().err
