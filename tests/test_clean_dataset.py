"""scripts/clean_dataset.py and facetrain.curation: on identities with noise of each kind injected where the test
knows it, each check finds it (precision and recall asserted); on real photos, exact duplicates (same pixels,
other bytes) within and across identities; the lists train as they are; bad input stops in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facetrain.curation.clean import CleanOptions, find_noise
from facetrain.curation.identities import dominant_subcentres, mean_outliers, subcentre_outliers
from facetrain.curation.report import write_outputs
from facetrain.curation.similarity import similar_pairs
from facetrain.data import RecordDataset
from facetrain.errors import ModelError
from tests.conftest import SMOKE
from tests.curation_helpers import identity_code, pooled_model, precision_recall, write_gallery, write_noisy_set
from tests.eval_helpers import edited_checkpoint, load_script, write_checkpoint


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noisy")
    truth = write_noisy_set(folder)
    options = CleanOptions(truth.root, Path("unused"), folder / "clean", eval_bins=[truth.bin_path], chunk=100)
    return truth, options, find_noise(options, pooled_model())


def test_outliers_moved_images_are_found(noisy):
    truth, _, findings = noisy
    wrong_identity = set(truth.moved) | set(truth.duplicate_across)  # a copy in another identity is one too
    precision, recall = precision_recall(set(findings.flags["outlier"].tolist()), wrong_identity)
    assert recall == 1.0 and precision >= 0.9, (precision, recall)
    assert findings.outlier_method.startswith("identity mean embedding")


def test_exact_duplicates_within_and_across_identities(noisy):
    truth, _, findings = noisy
    assert findings.flags["duplicate_within"].tolist() == truth.duplicate_within
    assert findings.flags["duplicate_across"].tolist() == truth.duplicate_across  # the copy far from its centre


def test_identities_of_one_person_are_listed_as_pairs(noisy):
    truth, _, findings = noisy
    i, j, cos = findings.merge_pairs
    found = set(zip(i.tolist(), j.tolist()))
    assert found == set(truth.one_person) and (cos > 0.9).all()


def test_identities_copied_from_the_evaluation_set_are_found(noisy):
    truth, _, findings = noisy
    assert findings.overlap.identities.tolist() == truth.from_evaluation
    assert all(name.startswith("eval.bin#") for name in findings.evaluation_names)
    assert set(findings.flags["overlap"].tolist()) == {k for k, label in enumerate(truth.labels)
                                                       if label in truth.from_evaluation}


def test_gallery_identities_that_are_training_identities_are_found(noisy, tmp_path):
    """A gallery (identity folders of new images) of training identities 3, 4 (one person with 5) and 13, and of two
    people not in training: exactly 3, 4, 5 and 13 overlap, each listed with the gallery identity it matches, and
    --remove-overlap excludes their images."""
    truth, options, _ = noisy
    rng = np.random.default_rng(7)
    people = {"alice": truth.codes[3], "bob": truth.codes[4], "carol": truth.codes[13], "dave": identity_code(rng),
              "erin": identity_code(rng)}
    gallery = write_gallery(tmp_path / "gallery", people)
    expected = {3: "alice", 4: "bob", 5: "bob", 13: "carol"}
    options = CleanOptions(**{**options.__dict__, "output": tmp_path / "clean", "eval_bins": [],
                              "eval_galleries": [gallery], "remove_overlap": True})
    findings = find_noise(options, pooled_model())
    assert precision_recall(set(findings.overlap.identities.tolist()), set(expected)) == (1.0, 1.0)
    report = write_outputs(findings, options)
    assert {o["identity"]: o["evaluation"] for o in report["overlap"]} == {
        identity: f"gallery:gallery/{name}" for identity, name in expected.items()}
    assert "- identity 13 ~ gallery:gallery/carol: cosine" in (tmp_path / "clean" / "report.md").read_text()
    samples = {k for k, label in enumerate(truth.labels) if label in expected}
    excluded = {int(line) for line in (tmp_path / "clean" / "exclude.txt").read_text().splitlines()[1:]}
    assert set(report["flagged"]["overlap"]) == samples and samples <= excluded


def test_outputs_list_what_they_exclude_and_train_as_they_are(noisy, run_cli, tmp_path):
    truth, options, findings = noisy
    report = write_outputs(findings, options)
    excluded = {int(line) for line in (options.output / "exclude.txt").read_text().splitlines()[1:]}
    included = {int(line) for line in (options.output / "include.txt").read_text().splitlines()[1:]}
    assert excluded | included == set(range(len(truth.labels))) and not excluded & included
    assert excluded == set(truth.moved) | set(truth.duplicate_within) | set(truth.duplicate_across)  # overlap: listed
    saved = json.loads((options.output / "report.json").read_text())
    assert saved["counts"] == report["counts"] and saved["counts"]["duplicate_within"] == 3
    assert saved["model"]["sha256"] == "0" * 64 and saved["thresholds"]["outlier_degrees"] == 75.0
    assert "| outlier | 9 |" in (options.output / "report.md").read_text()
    sheet = Image.open(options.output / "sheet_outlier.png")
    assert sheet.size[0] == 5 * 112 and sorted(report["sheets"])[0] == "sheet_duplicate_across.png"
    result = run_cli(*SMOKE, "dataset=rec", f"dataset.root={truth.root}", f"dataset.exclude={options.output / 'exclude.txt'}",
                     "trainer.max_steps=2", "eval.at_start=false", "checkpoint.every_steps=0")
    assert result.returncode == 0, result.stderr
    assert f"keep {len(included)} of {len(truth.labels)} images" in result.stderr


def test_the_new_recordio_merges_and_drops_on_request(noisy, tmp_path):
    truth, options, findings = noisy
    options = CleanOptions(**{**options.__dict__, "output": tmp_path / "clean", "rec": True, "merge": True,
                              "remove_overlap": True})
    report = write_outputs(findings, options)
    rec = RecordDataset(tmp_path / "clean" / "rec")
    # 30 identities less 3 overlapping ones, less 2 merged away; images: all less excluded
    assert rec.num_classes == 25 and len(rec) == report["kept"] == report["samples"] - report["excluded"]
    labels = [rec.label_of(i) for i in range(len(rec))]
    assert labels.count(4) == 20  # identities 4 and 5 (10 genuine images each) are one


def test_features_are_cached_per_chunk_and_resume(noisy, tmp_path):
    """An interrupted pass keeps the chunks it finished; the next run embeds only the rest."""
    truth, options, _ = noisy
    calls, interrupt = [], True

    class Stopped(RuntimeError):
        pass

    class Counting(type(pooled_model().backbone)):
        def forward(self, x):
            calls.append(len(x))
            if len(calls) == 3 and interrupt:
                raise Stopped
            return super().forward(x)

    model = pooled_model()
    model.backbone = Counting().eval()
    resumed = CleanOptions(**{**options.__dict__, "cache": tmp_path / "cache", "batch_size": 50})
    with pytest.raises(Stopped):
        find_noise(resumed, model)
    calls.clear()
    interrupt = False
    again = find_noise(resumed, model)  # chunks of 100: the first is cached
    assert sum(calls) == len(truth.labels) - 100 + 40  # and the 40 evaluation images (not cached: small)
    assert np.array_equal(again.flags["outlier"], noisy[2].flags["outlier"])


def test_subcentre_procedure_takes_the_dominant_subcentre():
    """insightface drop.py: votes by nearest sub-centre; the winner judges; a sample 80 degrees away is dropped."""
    angles = np.radians([0, 5, 10, 80, 170])
    features = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    labels = np.zeros(5, np.int64)
    subcentres = np.array([[[0.0, -1.0], [2.0, 0.0], [-1.0, 0.1]]], np.float32)  # not normalised, as a head holds
    assert np.allclose(dominant_subcentres(features, labels, subcentres, np.ones(5, bool)), [[1.0, 0.0]])
    outliers, _ = subcentre_outliers(features, labels, subcentres, 75.0, np.ones(5, bool))
    assert outliers.tolist() == [False, False, False, True, True]


def test_mean_procedure_judges_again_without_the_outliers():
    """Three far samples (150 deg) pull the first mean towards a sample at 100 deg (52 deg from it: kept); the mean
    computed again without them stands at 11 deg, and the sample, 88 deg from it, is flagged."""
    angles = np.radians([0, 0, 0, 0, 0, 150, 150, 150, 100])
    features = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    outliers, centres = mean_outliers(features, np.zeros(9, np.int64), 1, 75.0, np.ones(9, bool))
    assert outliers.tolist() == [False] * 5 + [True] * 4
    assert np.degrees(np.arctan2(centres[0, 1], centres[0, 0])) == pytest.approx(11.5, abs=0.1)


def test_similar_pairs_blockwise_equals_the_whole_matrix():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    i, j, cos = similar_pairs(rows, 0.3, block=7)
    whole = rows @ rows.T
    expected = {(a, b) for a in range(50) for b in range(a + 1, 50) if whole[a, b] > 0.3}
    assert set(zip(i.tolist(), j.tolist())) == expected and np.allclose(cos, whole[i, j], atol=1e-6)


# ---- the script on real photos ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_people(tmp_path_factory):
    """Identity folders of aligned real faces; obama's crop appears twice in 'obama' (once as PNG: other bytes, same
    pixels) and once in 'biden'."""
    from tests.test_align_scripts import aligned_face

    root = tmp_path_factory.mktemp("people")
    faces = {name: aligned_face(f"{name}.jpg") for name in ("obama", "biden", "astronaut")}
    for person, face in faces.items():
        (root / "people" / person).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.roll(face, 2 * k, axis=1)).save(root / "people" / person / f"{k}.jpg", quality=95)
    obama = np.asarray(Image.open(root / "people" / "obama" / "0.jpg"))
    Image.fromarray(obama).save(root / "people" / "obama" / "3.png")
    shutil.copy(root / "people" / "obama" / "0.jpg", root / "people" / "biden" / "9.jpg")
    write_checkpoint(root / "model.pt", calibrate=np.stack(list(faces.values())))
    return root


def test_script_finds_duplicates_among_real_photos(photo_people, tmp_path):
    out = tmp_path / "clean"
    assert load_script("clean_dataset").main([str(photo_people / "people"), "--model", str(photo_people / "model.pt"),
                                              "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    names = sorted(p.relative_to(photo_people / "people").as_posix() for p in (photo_people / "people").rglob("*.*"))
    flagged = {reason: [names[i] for i in report["flagged"][reason]] for reason in ("duplicate_within", "duplicate_across")}
    assert flagged["duplicate_within"] == ["obama/3.png"]
    assert len(flagged["duplicate_across"]) == 1 and flagged["duplicate_across"][0] in ("biden/9.jpg", "obama/0.jpg")
    assert report["model"]["sha256"] == (photo_people / "model.pt.sha256").read_text().split()[0]


@pytest.mark.parametrize("args, problem", [
    (["--outlier-degrees", "200"], "--outlier-degrees 200.0 is not in (0, 180)"),
    (["--merge"], "--merge needs --rec"),
    (["--remove-overlap"], "--remove-overlap without evaluation data"),
    (["--eval-bin", "missing.bin"], "--eval-bin missing.bin does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(photo_people, tmp_path, capsys, args, problem):
    argv = [str(photo_people / "people"), "--model", str(photo_people / "model.pt"), "--output", str(tmp_path), *args]
    assert load_script("clean_dataset").main(argv) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


def test_an_empty_or_missing_gallery_is_one_line_and_exit_2(photo_people, tmp_path, capsys):
    """Checked before the feature pass; a gallery is evaluation data for --remove-overlap."""
    (tmp_path / "empty").mkdir()
    for folder, problem in ((tmp_path / "empty", "holds no identity folders"), (tmp_path / "none", "does not exist")):
        argv = [str(photo_people / "people"), "--model", str(photo_people / "model.pt"), "--output", str(tmp_path / "o"),
                "--eval-gallery", str(folder), "--remove-overlap"]
        assert load_script("clean_dataset").main(argv) == 2
        err = capsys.readouterr().err
        assert f"gallery folder {folder} {problem}" in err and err.count("\n") == 1
        assert not (tmp_path / "o" / "features").exists()


def test_a_missing_or_bad_model_is_named_first(photo_people, tmp_path, capsys):
    missing = [str(tmp_path / "nowhere"), "--model", str(tmp_path / "none.pt"), "--output", str(tmp_path / "o")]
    assert load_script("clean_dataset").main(missing) == 2
    assert f"{tmp_path / 'none.pt'} does not exist" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("not a model")
    bad = [str(photo_people / "people"), "--model", str(tmp_path / "text.pt"), "--output", str(tmp_path / "o")]
    assert load_script("clean_dataset").main(bad) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "text.pt") in err and err.count("\n") == 1


def test_a_missing_dataset_is_one_line(photo_people, tmp_path, capsys):
    argv = [str(tmp_path / "nowhere"), "--model", str(photo_people / "model.pt"), "--output", str(tmp_path / "o")]
    assert load_script("clean_dataset").main(argv) == 2
    assert "dataset " + str(tmp_path / "nowhere") + " does not exist" in capsys.readouterr().err


def test_a_subcenter_checkpoint_judges_outliers_by_its_dominant_subcentres(photo_people, tmp_path):
    def subcenter_head(classes):
        def edit(state):
            state["config"]["loss"] = {"name": "subcenter_arcface", "k": 3}
            state["head"] = {"weight": torch.randn(classes * 3, 32, generator=torch.Generator().manual_seed(0))}
        return edit

    model = edited_checkpoint(photo_people / "model.pt", tmp_path / "subcenter.pt", subcenter_head(3))
    options = CleanOptions(photo_people / "people", model, tmp_path / "clean")
    findings = find_noise(options)
    assert findings.outlier_method.startswith("sub-center ArcFace") and findings.model.subcentres.shape == (3, 3, 32)
    assert find_noise(CleanOptions(**{**options.__dict__, "subcentres": False})).outlier_method.startswith("identity mean")
    wrong = edited_checkpoint(photo_people / "model.pt", tmp_path / "wrong.pt", subcenter_head(5))
    with pytest.raises(ModelError, match="sub-center ArcFace checkpoint of 5 classes, the dataset has 3"):
        find_noise(CleanOptions(photo_people / "people", wrong, tmp_path / "clean2"))


def test_pair_lists_are_evaluation_data_too(photo_people, tmp_path):
    """The pair list's image is obama's face: the identity 'obama' overlaps it."""
    (tmp_path / "eval").mkdir()
    Image.open(photo_people / "people" / "obama" / "1.jpg").save(tmp_path / "eval" / "a.png")
    Image.open(photo_people / "people" / "obama" / "2.jpg").save(tmp_path / "eval" / "b.png")
    (tmp_path / "pairs.txt").write_text("a.png b.png 1\n")
    options = CleanOptions(photo_people / "people", photo_people / "model.pt", tmp_path / "clean",
                           eval_pairs=[(tmp_path / "pairs.txt", tmp_path / "eval")])
    findings = find_noise(options)
    obama = sorted(p.name for p in (photo_people / "people").iterdir()).index("obama")
    assert obama in findings.overlap.identities.tolist()
    assert findings.evaluation_names == ["pairs.txt:a.png", "pairs.txt:b.png"]
