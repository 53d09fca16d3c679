"""Evaluation at tiny sizes on the session's tiny run: report contract, NIfTI predictions,
test data kept out of model selection, FID failure/success, reuse, the command."""
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
from eval_fixtures import fid_weights, hard_pairs, workdir_copy  # noqa: F401  (fixtures)
from tfdpgan import errors, workdir as workdir_lib
from tfdpgan.data import volumes
from tfdpgan.evaluation import config as config_lib, evaluate, inputs, report, seg_metrics, unet
from tfdpgan.gan import sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (40, 40, 8)
# Test patient t1 is stored with a rotated/flipped in-plane axis order (not RAS+).
ROTATED = np.array([[0.0, -0.5, 0.0, 12.0], [0.5, 0.0, 0.0, -4.0], [0.0, 0.0, 0.7, 3.0],
                    [0.0, 0.0, 0.0, 1.0]])
TINY_UNET = unet.UNetConfig(base_filters=4, depth=2, learning_rate=3e-3, batch_size=16,
                            epochs=2, steps_per_epoch=3, augment=False, max_restarts=0)
REPORT_KEYS = {"dsc_mean", "dsc_sd", "hd95_mean_mm", "hd95_sd_mm", "per_patient", "fid",
               "fid_real_floor", "fid_network", "flags", "privacy", "selection"}


@pytest.fixture(scope="module")
def run(workdir_copy, tiny_dataset, tmp_path_factory):
    """The tiny run (a copy) and an external test folder: t0, and t1 stored rotated."""
    root = tmp_path_factory.mktemp("evaluate")
    test = str(root / "test")
    write_case(test, "t0", split="Ts", shape=SHAPE, seed=50)
    write_case(test, "t1", split="Ts", shape=SHAPE, seed=51, affine=ROTATED)
    return {"data": tiny_dataset[0], "rec": tiny_dataset[1], "workdir": workdir_copy,
            "test": test, "root": root}


def _config(run, **kw):
    values = dict(workdir=run["workdir"], num_synthetic=48, fid=False, unet=TINY_UNET, grid="",
                  test_data=run["test"])
    values.update(kw)
    return evaluate.EvalConfig(**values)


@pytest.fixture(scope="module")
def evaluated(run):
    """evaluate() with both baselines and real_val selection, recording every read of volume
    data and every training/selection call (real functions wrapping the real ones)."""
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
        mp.setattr(seg_metrics, "best_threshold_dice", best_threshold_dice)
        result = evaluate.evaluate(_config(run, real_train=run["rec"], threshold_baseline=True,
                                           selection="real_val"))
    return result, events


def test_report_contract(evaluated, run):
    result, _ = evaluated
    out = workdir_lib.path(run["workdir"], workdir_lib.EVAL)
    assert out.startswith(workdir_lib.private_dir(run["workdir"]))   # real test data
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o700)
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk == result and REPORT_KEYS <= set(result)
    assert [p["patient_id"] for p in result["per_patient"]] == ["t0", "t1"]
    dsc = [p["dsc"] for p in result["per_patient"]]
    assert result["dsc_mean"] == pytest.approx(np.mean(dsc))
    assert result["dsc_sd"] == pytest.approx(np.std(dsc, ddof=1))
    hd = [p["hd95_mm"] for p in result["per_patient"] if p["hd95_mm"] is not None]
    assert result["hd95_num_undefined"] == 2 - len(hd)
    if hd:
        assert result["hd95_mean_mm"] == pytest.approx(np.mean(hd))
    assert result["fid"] is None and result["fid_real_floor"] is None
    assert result["fid_network"] is None
    card = workdir_lib.read_card(run["workdir"])
    assert result["source"] == "synthetic"
    assert result["privacy"]["epsilon"] == card["epsilon"]
    assert result["privacy"]["unit"] == card["privacy_unit"]
    assert result["flags"]["num_synthetic"] == 48 and result["flags"]["fid"] is False
    sel = result["selection"]
    assert sel["method"] == "real_val" and sel["uses_private_data"] is True
    assert "outside the DP" in sel["note"]
    val_ids = json.load(open(os.path.join(run["rec"], "dataset.json")))["splits"]["val"]
    assert sel["val_patients"] == val_ids["patients"]
    assert sel["grid"][0]["best_epoch"] in (1, 2) and len(sel["grid"][0]["val_dice"]) == 2
    assert set(result["baselines"]) == {"real_train", "threshold"}
    for row in result["baselines"].values():
        assert {"dsc_mean", "dsc_sd", "hd95_mean_mm", "per_patient", "selection"} <= set(row)
    assert math.isfinite(result["baselines"]["threshold"]["selection"]["threshold"])
    assert "synthetic_label_threshold" in result["conventions"]
    assert result["host"] == report.host() and result["host"]["cores"] == os.cpu_count()
    text = open(os.path.join(out, "REPORT.md")).read()
    assert "DSC" in text and "outside the DP" in text and "upper bound" in text
    assert f"{result['host']['cores']} cores" in text


def test_predictions_are_nifti_on_the_input_grid(evaluated, run):
    result, _ = evaluated
    out = workdir_lib.path(run["workdir"], workdir_lib.EVAL)
    for entry in result["per_patient"]:
        pid = entry["patient_id"]
        source = nib.load(os.path.join(run["test"], "labelsTs", f"{pid}.nii.gz"))
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
    test_images = {os.path.join(run["test"], "imagesTs", f"t{i}.nii.gz") for i in range(2)}
    info = json.load(open(os.path.join(run["rec"], "dataset.json")))
    val_images = {info["patients"][p]["files"]["image"] for p in info["splits"]["val"]["patients"]}
    assert val_images
    reads = [(i, path) for i, (kind, path) in enumerate(events) if kind == "read"]
    selection = [i for i, (kind, _) in enumerate(events) if kind == "select"]
    assert len(selection) == 5   # two U-Net rows (start, end) and one threshold choice
    test_reads = [i for i, path in reads if path in test_images]
    assert {path for _, path in reads if path in test_images} == test_images
    assert min(test_reads) > max(selection), events
    assert {path for i, path in reads if i < min(selection)} == val_images
    assert not any(path in test_images for i, path in reads if i < max(selection))


def _synthetic_set_and_volume_reads(run, tmp_path, monkeypatch):
    """(40 sampled synthetic pairs as a TFRecord folder, the list that records the patient id
    of every volume load_volume reads from now on)."""
    syn = str(tmp_path / "syn")
    sample.sample_to(workdir_lib.path(run["workdir"], workdir_lib.GENERATOR), 40, syn,
                     "tfrecord")
    read = []
    real_load = volumes.load_volume

    def load_volume(case, patch_size=None):
        read.append(case.patient_id)
        return real_load(case, patch_size)

    monkeypatch.setattr(volumes, "load_volume", load_volume)
    return syn, read


def test_default_selection_is_synthetic_and_reads_no_real_validation_volume(run, tmp_path,
                                                                            monkeypatch):
    syn, read = _synthetic_set_and_volume_reads(run, tmp_path, monkeypatch)
    out = str(tmp_path / "eval")
    assert evaluate.EvalConfig(workdir="").selection == "synthetic_val"
    # (the threshold baseline, on by default, is a real-data row: it reads the validation
    # volumes, as real_train reads real patches; the synthetic U-Net's selection does not)
    assert evaluate.EvalConfig(workdir="").threshold_baseline
    result = evaluate.evaluate(_config(run, synthetic=syn, out_dir=out,
                                       threshold_baseline=False))
    assert read == ["t0", "t1"]                       # test patients only, no val volume
    sel = result["selection"]
    assert sel["method"] == "synthetic_val" and sel["uses_private_data"] is False
    assert sel["num_train_patches"] + sel["num_val_patches"] == 40
    assert result["flags"]["synthetic"] == syn
    assert os.path.isfile(os.path.join(out, "report.json"))


def test_threshold_baseline_is_chosen_on_real_validation_volumes(run, tmp_path, monkeypatch):
    """The threshold row is a real-data baseline: even with synthetic selection its threshold
    comes from the real validation volumes (read before any test volume), never from the
    synthetic patches."""
    syn, read = _synthetic_set_and_volume_reads(run, tmp_path, monkeypatch)
    result = evaluate.evaluate(_config(run, synthetic=syn, threshold_baseline=True,
                                       out_dir=str(tmp_path / "eval")))
    val_ids = json.load(open(os.path.join(run["rec"], "dataset.json")))["splits"]["val"]
    assert read[:len(val_ids["patients"])] == val_ids["patients"]
    assert read[len(val_ids["patients"]):] == ["t0", "t1"]
    assert result["selection"]["method"] == "synthetic_val"
    assert result["baselines"]["threshold"]["selection"]["method"] == "real_val"


def test_reuse_skips_finished_evaluation(evaluated, run, monkeypatch):
    result, _ = evaluated
    config = _config(run, real_train=run["rec"], threshold_baseline=True, selection="real_val")

    def forbidden(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(unet, "train_unet", forbidden)
    assert evaluate.evaluate(config, reuse=True) == result
    # other test-time settings: the selected U-Nets are reused, only the test phase runs
    out = os.path.join(str(run["root"]), "eval-overlap0")
    other = evaluate.evaluate(dataclasses.replace(config, overlap=0.0, out_dir=out))
    assert other["selection"]["reused"] is True and other["flags"]["overlap"] == 0.0


def test_test_patients_must_not_be_training_patients(run, tmp_path):
    info = json.load(open(os.path.join(run["rec"], "dataset.json")))
    train_id = info["splits"]["train"]["patients"][0]
    bad = str(tmp_path / "bad")
    write_case(bad, train_id, split="Ts", shape=SHAPE, seed=40)
    with pytest.raises(evaluate.EvaluationError, match=train_id):
        evaluate.evaluate(_config(run, test_data=bad, out_dir=str(tmp_path / "e")))
    assert not os.path.exists(tmp_path / "e")


def test_default_test_set_and_external_folder(run, tmp_path):
    own = evaluate.evaluate(_config(run, test_data=None, out_dir=str(tmp_path / "own")))
    info = json.load(open(os.path.join(run["rec"], "dataset.json")))
    assert own["test_set"]["patients"] == info["splits"]["test"]["patients"]
    ext = str(tmp_path / "ext")
    write_case(ext, "x0", split="Ts", shape=SHAPE, seed=60, with_mask=False)
    out = str(tmp_path / "e")
    result = evaluate.evaluate(_config(run, test_data=ext, out_dir=out))
    assert [p["patient_id"] for p in result["per_patient"]] == ["x0"]
    assert result["dsc_sd"] is None and result["test_set"]["source"] == os.path.abspath(ext)
    assert os.path.isfile(os.path.join(out, "predictions", "x0.nii.gz"))
    # the threshold row says where its threshold came from, and warns when the test volumes
    # are another source than those validation volumes
    own_sel, ext_sel = (r["baselines"]["threshold"]["selection"] for r in (own, result))
    assert run["rec"] in own_sel["volumes"] and "caveat" not in own_sel
    assert run["rec"] in ext_sel["volumes"] and "site shift" in ext_sel["caveat"]
    assert ext_sel["caveat"] in open(os.path.join(out, "REPORT.md")).read()


def test_repeats_average_several_unets_per_row(run, tmp_path):
    """--repeats=2: each U-Net row trains a second U-Net (another seed for sampling, hold-out
    and initialisation); a patient's DSC is the mean of both, each kept; the threshold row
    has one value; the report shows each U-Net's mean."""
    out = str(tmp_path / "e")
    one = evaluate.evaluate(_config(run, out_dir=str(tmp_path / "one"),
                                    real_train=run["rec"]))
    two = evaluate.evaluate(_config(run, out_dir=out, repeats=2, real_train=run["rec"]))
    for name in ("synthetic", "real_train"):
        row, single = (two, one) if name == "synthetic" else (
            two["baselines"][name], one["baselines"][name])
        assert row["repeats"] == 2 and len(row["dsc_mean_by_repeat"]) == 2
        keys = row["selection"]["repeat_keys"]
        assert len(set(keys)) == 2 and keys[0] == single["selection"]["key"]
        for p, q in zip(row["per_patient"], single["per_patient"]):
            assert p["dsc_repeats"][0] == pytest.approx(q["dsc"])   # repeat 0 = the single run
            assert p["dsc"] == pytest.approx(np.mean(p["dsc_repeats"]))
        assert row["dsc_mean"] == pytest.approx(np.mean(row["dsc_mean_by_repeat"]))
    threshold = two["baselines"]["threshold"]
    assert threshold["repeats"] == 1 and "dsc_repeats" not in threshold["per_patient"][0]
    assert "means over 2 U-Nets per row" in open(os.path.join(out, "REPORT.md")).read()
    with pytest.raises(evaluate.EvaluationError, match="--repeats"):
        evaluate.evaluate(_config(run, out_dir=str(tmp_path / "bad"), repeats=0))


def test_fid_network_failure_is_an_error(run, tmp_path):
    out = str(tmp_path / "e")
    with pytest.raises(evaluate.EvaluationError, match="FID network could not be loaded"):
        evaluate.evaluate(_config(run, fid=True, fid_weights=str(tmp_path / "none.npz"),
                                  out_dir=out))
    assert not os.path.exists(out)


@pytest.mark.network
@pytest.mark.slow
def test_fid_end_to_end(run, tmp_path, fid_weights):
    cache = str(tmp_path / "acts")
    config = _config(run, fid=True, fid_weights=fid_weights, fid_samples=6, fid_cache_dir=cache,
                     out_dir=str(tmp_path / "e"))
    result = evaluate.evaluate(config)
    assert result["fid"] > 0 and result["fid_real_floor"] > 0
    assert "Inception" in result["fid_network"]
    assert result["fid_samples"] == {"synthetic": 6, "real_test": 6, "real_train": 6}
    assert sorted(f.split("-")[0] for f in os.listdir(cache)) == [
        "activations", "activations", "distance"]   # real test, real train; the floor


def test_grid_parsing():
    configs = config_lib.grid_configs(TINY_UNET, "lr=1e-4,3e-4;dropout=0,0.1;augment=0,1")
    assert len(configs) == 8
    assert {(c.learning_rate, c.dropout, c.augment) for c in configs} == {
        (lr, d, a) for lr in (1e-4, 3e-4) for d in (0.0, 0.1) for a in (False, True)}
    assert config_lib.grid_configs(TINY_UNET, "") == [TINY_UNET]
    assert len(config_lib.grid_configs(TINY_UNET, config_lib.DEFAULT_GRID)) in (2, 3)
    for bad in ("lr", "speed=1", "lr=fast", "lr=1;lr=2", "augment=maybe"):
        with pytest.raises(evaluate.EvaluationError):
            config_lib.parse_grid(bad)


def test_summary_conventions():
    rows = [{"patient_id": "a", "dsc": 0.5, "hd95_mm": 2.0},
            {"patient_id": "b", "dsc": 0.0, "hd95_mm": None},      # empty prediction
            {"patient_id": "c", "dsc": 0.7, "hd95_mm": 4.0}]
    s = report.summary(rows)
    assert s["dsc_mean"] == pytest.approx(0.4) and s["dsc_sd"] == pytest.approx(0.360555, 1e-5)
    assert s["hd95_mean_mm"] == 3.0 and s["hd95_sd_mm"] == pytest.approx(math.sqrt(2))
    assert s["hd95_num_undefined"] == 1
    one = report.summary(rows[:1])
    assert one["dsc_sd"] is None and one["hd95_sd_mm"] is None
    assert report.format_mean_sd(0.5, None) == "0.500" and report.format_number(None) == "n/a"


def test_host_reads_the_cpu_model_and_its_best_instruction_set(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                       "flags\t\t: fpu sse4_2 avx avx2 fma\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: avx512f\n")
    h = report.host(str(cpuinfo))
    assert h["cpu"] == "Test CPU 9000" and h["isa"] == "avx2"   # the first processor's
    cpuinfo.write_text("model name : X\nflags : sse4_2 avx512f avx2\n")
    assert report.host(str(cpuinfo))["isa"] == "avx512f"
    missing = report.host(str(tmp_path / "absent"))
    assert missing["isa"] is None and missing["cores"] == os.cpu_count()


def test_synthetic_labels_are_binarised_at_the_stated_threshold():
    soft = np.array([[0.0, 0.49], [0.5, 1.0]], np.float32)[None]
    np.testing.assert_array_equal(inputs.binarize_labels(soft, 0.5)[0], [[0, 0], [1, 1]])
    mask255 = np.array([[0, 255]], np.uint8)[None]
    np.testing.assert_array_equal(inputs.binarize_labels(mask255, 0.5)[0], [[0, 1]])


@pytest.mark.slow
def test_default_evaluation_of_hard_pairs_reports_no_collapsed_unet(run, tmp_path):
    """Synthetic pairs with very sparse, noisy labels (what a barely trained generator gives):
    with the default loss, grid, selection and restarts (only the U-Net made tiny), the
    collapse detector fires and the U-Net whose DSC is reported predicts vessels."""
    syn = str(tmp_path / "hard")
    os.makedirs(syn)
    sample.write_tfrecord(*hard_pairs(320, 16, 0), syn, num_shards=1)
    small = dataclasses.replace(config_lib.DEFAULT_UNET, base_filters=4, depth=2, epochs=6,
                                steps_per_epoch=10)
    config = evaluate.EvalConfig(workdir=run["workdir"], synthetic=syn, fid=False,
                                 test_data=run["test"], out_dir=str(tmp_path / "e"), unet=small)
    result = evaluate.evaluate(config)
    sel = result["selection"]
    assert sel["method"] == "synthetic_val" and len(sel["grid"]) >= 2
    assert sel["collapse"]["restarts"] >= 1                  # the detector fired ...
    assert sel["collapse"]["chosen_collapsed"] is False      # ... and the chosen U-Net is fine
    chosen = next(g for g in sel["grid"] if g["config"] == sel["chosen"])
    assert chosen["collapsed"] is False and max(chosen["attempts"][-1]["probe_positives"]) > 0
    assert "restart(s) after a detected collapse" in open(
        os.path.join(tmp_path, "e", "REPORT.md")).read()


@pytest.mark.slow
def test_cli(run, tmp_path):
    out = str(tmp_path / "cli")
    args = [sys.executable, "-m", "tfdpgan.evaluate", f"--workdir={run['workdir']}",
            f"--out_dir={out}", "--fid=false", "--num_synthetic=48", "--unet_base_filters=4",
            "--unet_depth=2", "--unet_lr=3e-3", "--unet_batch_size=16", "--unet_epochs=2",
            "--unet_steps_per_epoch=3", "--nounet_augment", "--unet_max_restarts=0"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DSC" in done.stdout and os.path.isfile(os.path.join(out, "report.json"))
    written = json.load(open(os.path.join(out, "report.json")))
    assert written["flags"]["grid"] == ""            # an explicit --unet_lr: no default grid
    assert written["selection"]["method"] == "synthetic_val"
    bad = subprocess.run(args[:4] + [f"--out_dir={out}-2", "--fid_weights=/nonexistent.npz"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "FID" in errors[0] and "--fid=false" in errors[0]
    assert not os.path.exists(f"{out}-2")


def test_real_sample_is_a_fixed_subset_of_distinct_training_patches(tiny_dataset):
    """real_sample: the same distinct patches every call; disjoint halves for FID's two sets;
    a count beyond the data is an error naming the folder, not a silently smaller sample."""
    rec = tiny_dataset[1]
    images, labels = inputs.real_arrays(rec, 16)
    a_img, a_lab = inputs.real_sample(rec, 16, 40)
    b_img, _ = inputs.real_sample(rec, 16, 40)
    np.testing.assert_array_equal(a_img, b_img)
    flat = np.asarray(images).reshape(len(images), -1)
    rows = [int(np.flatnonzero((flat == x.reshape(-1)).all(1))[0]) for x in a_img]
    assert len(set(rows)) == 40                                  # distinct training patches
    np.testing.assert_array_equal(a_lab, np.asarray(labels)[rows])  # labels stay paired
    assert rows != sorted(rows)                                  # shuffled, not the first 40
    assert not np.array_equal(inputs.real_sample(rec, 16, 40, seed=1)[0], a_img)
    with pytest.raises(errors.EvaluationError, match="fewer than the"):
        inputs.real_sample(rec, 16, len(images) + 1)
