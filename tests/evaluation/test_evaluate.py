"""Evaluation at tiny sizes: report contract, NIfTI predictions, test data kept out of model
selection, FID failure/success, reuse."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import write_case
from tfdpgan.data import convert, volumes
from tfdpgan.evaluation import evaluate, seg_metrics, unet
from tfdpgan.gan import sample, training, wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (40, 40, 8)
# Test patient t1 is stored with a rotated/flipped in-plane axis order (not RAS+).
ROTATED = np.array([[0.0, -0.5, 0.0, 12.0], [0.5, 0.0, 0.0, -4.0], [0.0, 0.0, 0.7, 3.0],
                    [0.0, 0.0, 0.0, 1.0]])
TINY_UNET = unet.UNetConfig(base_filters=4, depth=2, learning_rate=3e-3, batch_size=16,
                            epochs=2, steps_per_epoch=3, augment=False)
REPORT_KEYS = {"dsc_mean", "dsc_sd", "hd95_mean_mm", "hd95_sd_mm", "per_patient", "fid",
               "fid_real_floor", "fid_network", "flags", "privacy", "selection"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A converted data set (3 train + 1 val patients, 2 test) and a tiny trained DP run."""
    root = tmp_path_factory.mktemp("evaluate")
    data = str(root / "data")
    for i in range(4):
        write_case(data, f"p{i}", shape=SHAPE, seed=40 + i)
    write_case(data, "t0", split="Ts", shape=SHAPE, seed=50)
    write_case(data, "t1", split="Ts", shape=SHAPE, seed=51, affine=ROTATED)
    rec = str(root / "rec")
    convert.convert(volumes.find_cases(data, "Tr"), rec,
                    convert.ConvertConfig(patch_size=16, patches_per_patient=40,
                                          val_fraction=0.25, num_shards=2, seed=0),
                    test_cases=volumes.find_cases(data, "Ts"), progress=lambda *a: None)
    workdir = str(root / "run")
    training.train(training.TrainConfig(
        workdir=workdir, data=rec, epsilon=3.0, batch_size=20, critic_steps=4,
        critic_steps_per_generator_step=2, base_filters=4, summary_every=100,
        image_every=100, checkpoint_every=100, num_samples_png=4,
        gan=wgan.WGANConfig(latent_dim=8), tf_seed=0))
    return {"data": data, "rec": rec, "workdir": workdir, "root": root}


def _config(run, **kw):
    values = dict(workdir=run["workdir"], num_synthetic=48, fid=False, unet=TINY_UNET)
    values.update(kw)
    return evaluate.EvalConfig(**values)


@pytest.fixture(scope="module")
def evaluated(run):
    """evaluate() with both baselines, recording every read of volume data and every
    training/selection call (real functions wrapping the real ones)."""
    events = []
    real = {"load_volume": volumes.load_volume, "check_headers": volumes.check_headers,
            "nib_load": nib.load, "grid": unet.train_unet_grid,
            "threshold": seg_metrics.best_threshold_dice}

    def load_volume(case, patch_size=None):
        events.append(("read", case.image))
        return real["load_volume"](case, patch_size)

    def check_headers(case, patch_size=None):
        events.append(("read", case.image))
        return real["check_headers"](case, patch_size)

    def nib_load(path, *args, **kwargs):
        events.append(("read", str(path)))
        return real["nib_load"](path, *args, **kwargs)

    def train_unet_grid(*args, **kwargs):
        events.append(("select", "start"))
        result = real["grid"](*args, **kwargs)
        events.append(("select", "end"))
        return result

    def best_threshold_dice(*args, **kwargs):
        events.append(("select", "threshold"))
        return real["threshold"](*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(volumes, "load_volume", load_volume)
        mp.setattr(volumes, "check_headers", check_headers)
        mp.setattr(nib, "load", nib_load)
        mp.setattr(unet, "train_unet_grid", train_unet_grid)
        mp.setattr(metrics, "best_threshold_dice", best_threshold_dice)
        report = evaluate.evaluate(_config(run, real_train=run["rec"],
                                           threshold_baseline=True))
    return report, events


def test_report_contract(evaluated, run):
    report, _ = evaluated
    out = os.path.join(run["workdir"], "eval")
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk == report and REPORT_KEYS <= set(report)
    assert [p["patient_id"] for p in report["per_patient"]] == ["t0", "t1"]
    dsc = [p["dsc"] for p in report["per_patient"]]
    assert report["dsc_mean"] == pytest.approx(np.mean(dsc))
    assert report["dsc_sd"] == pytest.approx(np.std(dsc, ddof=1))
    hd = [p["hd95_mm"] for p in report["per_patient"] if p["hd95_mm"] is not None]
    assert report["hd95_num_undefined"] == 2 - len(hd)
    if hd:
        assert report["hd95_mean_mm"] == pytest.approx(np.mean(hd))
    assert report["fid"] is None and report["fid_real_floor"] is None
    assert report["fid_network"] is None
    card = json.load(open(os.path.join(run["workdir"], "privacy.json")))
    assert report["source"] == "synthetic"
    assert report["privacy"]["epsilon"] == card["epsilon"]
    assert report["privacy"]["unit"] == card["privacy_unit"]
    assert report["flags"]["num_synthetic"] == 48 and report["flags"]["fid"] is False
    sel = report["selection"]
    assert sel["method"] == "real_val" and sel["uses_private_data"] is True
    assert "outside the DP" in sel["note"]
    val_ids = json.load(open(os.path.join(run["rec"], "dataset.json")))["splits"]["val"]
    assert sel["val_patients"] == val_ids["patients"]
    assert sel["grid"][0]["best_epoch"] in (1, 2) and len(sel["grid"][0]["val_dice"]) == 2
    assert set(report["baselines"]) == {"real_train", "threshold"}
    for row in report["baselines"].values():
        assert {"dsc_mean", "dsc_sd", "hd95_mean_mm", "per_patient", "selection"} <= set(row)
    assert math.isfinite(report["baselines"]["threshold"]["selection"]["threshold"])
    text = open(os.path.join(out, "REPORT.md")).read()
    assert "DSC" in text and "outside the DP" in text and "upper bound" in text


def test_predictions_are_nifti_on_the_input_grid(evaluated, run):
    report, _ = evaluated
    out = os.path.join(run["workdir"], "eval")
    for entry in report["per_patient"]:
        pid = entry["patient_id"]
        source = nib.load(os.path.join(run["data"], "labelsTs", f"{pid}.nii.gz"))
        pred = nib.load(os.path.join(out, "predictions", f"{pid}.nii.gz"))
        assert pred.get_data_dtype() == np.uint8 and pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine)
        data = np.asarray(pred.dataobj)
        assert set(np.unique(data)) <= {0, 1}
        # in the input's own voxel order the prediction scores what the report says
        label = np.asarray(source.dataobj)
        assert seg_metrics.dice(data, label) == pytest.approx(entry["dsc"])
        for row in ("real_train", "threshold"):
            assert os.path.isfile(os.path.join(out, f"predictions_{row}", f"{pid}.nii.gz"))
    np.testing.assert_allclose(
        nib.load(os.path.join(out, "predictions", "t1.nii.gz")).affine, ROTATED)


def test_test_data_is_read_only_after_model_selection(evaluated, run):
    _, events = evaluated
    test_images = {os.path.join(run["data"], "imagesTs", f"t{i}.nii.gz") for i in range(2)}
    info = json.load(open(os.path.join(run["rec"], "dataset.json")))
    val_images = {info["patients"][p]["files"]["image"] for p in info["splits"]["val"]["patients"]}
    reads = [(i, path) for i, (kind, path) in enumerate(events) if kind == "read"]
    selection = [i for i, (kind, _) in enumerate(events) if kind == "select"]
    assert len(selection) == 5   # two U-Net rows (start, end) and one threshold choice
    test_reads = [i for i, path in reads if path in test_images]
    assert {path for _, path in reads if path in test_images} == test_images
    assert min(test_reads) > max(selection), events
    assert {path for i, path in reads if i < min(selection)} == val_images
    assert not any(path in test_images for i, path in reads if i < max(selection))


def test_synthetic_val_selection_reads_no_real_validation_volume(run, tmp_path, monkeypatch):
    syn = str(tmp_path / "syn")
    sample.sample_to(os.path.join(run["workdir"], "generator"), 40, syn, "tfrecord")
    read = []
    real_load = volumes.load_volume

    def load_volume(case, patch_size=None):
        read.append(case.patient_id)
        return real_load(case, patch_size)

    monkeypatch.setattr(volumes, "load_volume", load_volume)
    out = str(tmp_path / "eval")
    report = evaluate.evaluate(_config(run, synthetic=syn, selection="synthetic_val",
                                       threshold_baseline=True, out_dir=out))
    assert read == ["t0", "t1"]                       # test patients only, no val volume
    sel = report["selection"]
    assert sel["method"] == "synthetic_val" and sel["uses_private_data"] is False
    assert sel["num_train_patches"] + sel["num_val_patches"] == 40
    assert report["flags"]["synthetic"] == syn
    assert os.path.isfile(os.path.join(out, "report.json"))


def test_reuse_skips_finished_evaluation(evaluated, run, monkeypatch):
    report, _ = evaluated
    config = _config(run, real_train=run["rec"], threshold_baseline=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(unet, "train_unet", forbidden)
    again = evaluate.evaluate(config, reuse=True)
    assert again == report
    # other test-time settings: the selected U-Nets are reused, only the test phase runs
    out = os.path.join(str(run["root"]), "eval-overlap0")
    other = evaluate.evaluate(dataclasses.replace(config, overlap=0.0, out_dir=out))
    assert other["selection"]["reused"] is True and other["flags"]["overlap"] == 0.0


def test_test_patients_must_not_be_training_patients(run, tmp_path):
    bad = str(tmp_path / "bad")
    write_case(bad, "p0", split="Ts", shape=SHAPE, seed=40)
    with pytest.raises(evaluate.EvaluationError, match="p0"):
        evaluate.evaluate(_config(run, test_data=bad, out_dir=str(tmp_path / "e")))


def test_external_test_folder(run, tmp_path):
    ext = str(tmp_path / "ext")
    write_case(ext, "x0", split="Ts", shape=SHAPE, seed=60, with_mask=False)
    out = str(tmp_path / "e")
    report = evaluate.evaluate(_config(run, test_data=ext, out_dir=out))
    assert [p["patient_id"] for p in report["per_patient"]] == ["x0"]
    assert report["dsc_sd"] is None and report["test_set"]["source"] == os.path.abspath(ext)
    assert os.path.isfile(os.path.join(out, "predictions", "x0.nii.gz"))


def test_fid_network_failure_is_an_error(run, tmp_path):
    out = str(tmp_path / "e")
    with pytest.raises(evaluate.EvaluationError, match="FID network could not be loaded"):
        evaluate.evaluate(_config(run, fid=True, fid_weights=str(tmp_path / "none.npz"),
                                  out_dir=out))
    assert not os.path.exists(out)


def test_fid_end_to_end(run, tmp_path):
    from tfdpgan.evaluation import fid
    weights = os.path.join(fid.weights_dir(), "weights.npz")
    if not os.path.isfile(weights):
        pytest.skip("FID weights not cached (python -m tfdpgan.fid --fetch)")
    cache = str(tmp_path / "acts")
    config = _config(run, fid=True, fid_weights=weights, fid_samples=6, fid_cache_dir=cache,
                     out_dir=str(tmp_path / "e"))
    report = evaluate.evaluate(config)
    assert report["fid"] > 0 and report["fid_real_floor"] > 0
    assert "Inception" in report["fid_network"]
    assert report["fid_samples"] == {"synthetic": 6, "real_test": 6, "real_train": 6}
    assert sorted(f.split("-")[0] for f in os.listdir(cache)) == [
        "activations", "activations", "distance"]   # real test, real train; the floor


def test_grid_parsing():
    configs = evaluate.grid_configs(TINY_UNET, "lr=1e-4,3e-4;dropout=0,0.1;augment=0,1")
    assert len(configs) == 8
    assert {(c.learning_rate, c.dropout, c.augment) for c in configs} == {
        (lr, d, a) for lr in (1e-4, 3e-4) for d in (0.0, 0.1) for a in (False, True)}
    assert evaluate.grid_configs(TINY_UNET, "") == [TINY_UNET]
    for bad in ("lr", "speed=1", "lr=fast", "lr=1;lr=2", "augment=maybe"):
        with pytest.raises(evaluate.EvaluationError):
            evaluate.parse_grid(bad)


def test_summary_conventions():
    rows = [{"patient_id": "a", "dsc": 0.5, "hd95_mm": 2.0},
            {"patient_id": "b", "dsc": 0.0, "hd95_mm": None},      # empty prediction
            {"patient_id": "c", "dsc": 0.7, "hd95_mm": 4.0}]
    s = evaluate._summary(rows)
    assert s["dsc_mean"] == pytest.approx(0.4) and s["dsc_sd"] == pytest.approx(0.360555, 1e-5)
    assert s["hd95_mean_mm"] == 3.0 and s["hd95_sd_mm"] == pytest.approx(math.sqrt(2))
    assert s["hd95_num_undefined"] == 1
    one = evaluate._summary(rows[:1])
    assert one["dsc_sd"] is None and one["hd95_sd_mm"] is None


def test_cli(run, tmp_path):
    out = str(tmp_path / "cli")
    args = [sys.executable, "-m", "tfdpgan.evaluate", f"--workdir={run['workdir']}",
            f"--out_dir={out}", "--fid=false", "--num_synthetic=48", "--unet_base_filters=4",
            "--unet_depth=2", "--unet_lr=3e-3", "--unet_batch_size=16", "--unet_epochs=2",
            "--unet_steps_per_epoch=3", "--nounet_augment"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DSC" in done.stdout and os.path.isfile(os.path.join(out, "report.json"))
    bad = subprocess.run(args[:4] + [f"--out_dir={out}-2", "--fid_weights=/nonexistent.npz"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "FID" in errors[0] and "--fid=false" in errors[0]
