"""The leakage audit: metric helpers by hand, planted leaks, and a tiny trained workdir."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfdpgan.leakage import audit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- metric helpers ------------------------------------------------------------------------


def test_auc_and_tpr_at_fpr_hand_computed():
    # members {1, 3}, non-members {2, 4}: only (3 > 2) of the 4 pairs is ordered right
    assert audit.roc_auc([1, 3], [2, 4]) == pytest.approx(0.25)
    # ROC vertices (0,0) (0.5,0) (0.5,0.5) (1,0.5) (1,1)
    assert audit.tpr_at_fpr([1, 3], [2, 4], 0.25) == pytest.approx(0.0)
    assert audit.tpr_at_fpr([1, 3], [2, 4], 0.5) == pytest.approx(0.5)
    assert audit.tpr_at_fpr([1, 3], [2, 4], 0.75) == pytest.approx(0.5)
    assert audit.tpr_at_fpr([1, 3], [2, 4], 1.0) == pytest.approx(1.0)
    # separated: everything caught at FPR 0
    assert audit.roc_auc([3, 4], [1, 2]) == 1.0
    assert audit.tpr_at_fpr([3, 4], [1, 2], 0.0) == 1.0
    # one tie: the diagonal (0,0) -> (1,1), interpolated
    assert audit.roc_auc([1], [1]) == 0.5
    assert audit.tpr_at_fpr([1], [1], 0.5) == pytest.approx(0.5)
    # members {5, 3, 1}, non-members {4, 2, 0, -1}: vertices (0,1/3) (1/4,1/3) (1/4,2/3)...
    pos, neg = [5, 3, 1], [4, 2, 0, -1]
    assert audit.tpr_at_fpr(pos, neg, 0.0) == pytest.approx(1 / 3)
    assert audit.tpr_at_fpr(pos, neg, 0.125) == pytest.approx(1 / 3)
    assert audit.tpr_at_fpr(pos, neg, 0.25) == pytest.approx(2 / 3)
    assert audit.roc_auc(pos, neg) == pytest.approx((4 + 3 + 2) / 12)
    assert audit.roc_auc([], [1]) is None and audit.tpr_at_fpr([1], [], 0.1) is None


def test_auc_standard_error_hanley_mcneil():
    assert audit.auc_standard_error(0.5, 1, 1) == pytest.approx(0.5)
    # A = 0.5: Q1 = Q2 = 1/3, var = (1/4 + 2 * 99 * (1/3 - 1/4)) / 100^2
    assert audit.auc_standard_error(0.5, 100, 100) == pytest.approx(
        math.sqrt((0.25 + 2 * 99 / 12) / 1e4))
    assert audit.auc_standard_error(1.0, 10, 10) == 0.0
    assert audit.auc_standard_error(None, 10, 10) is None


def test_attack_metrics_report_resolution():
    rng = np.random.default_rng(0)
    m = audit.attack_metrics(rng.normal(size=300), rng.normal(size=100))
    assert m["num_members"] == 300 and m["num_nonmembers"] == 100
    assert m["fpr_resolved"] == {"0.01": True, "0.001": False}
    assert m["fpr_resolution"] == pytest.approx(0.01)
    assert m["auc_se"] == pytest.approx(audit.auc_standard_error(m["auc"], 300, 100))
    assert set(m["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert 0.0 <= m["tpr_at_fpr_0"] <= m["tpr_at_fpr"]["0.001"] <= m["tpr_at_fpr"]["0.01"]


def test_patient_means():
    means = audit.patient_means([1.0, 3.0, 5.0, 10.0], np.array([0, 0, 2, 2]), 3)
    assert means[0] == 2.0 and np.isnan(means[1]) and means[2] == 7.5


def test_dp_tpr_bound():
    assert audit.dp_tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert audit.dp_tpr_bound(0.0, 0.0, 0.001) == pytest.approx(0.001)
    assert audit.dp_tpr_bound(3.0, 1e-5, 0.1) == 1.0            # capped
    assert audit.dp_tpr_bound(3.0, 1e-5, 0.01, group=500) == 1.0  # group privacy: vacuous
    eps, delta = 0.1, 1e-6
    assert audit.dp_tpr_bound(eps, delta, 0.01, group=2) == pytest.approx(
        math.exp(2 * eps) * 0.01 + 2 * math.exp(eps) * delta)


def test_cross_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (230, 40)).astype(np.float32)
    b = rng.uniform(-1, 1, (57, 40)).astype(np.float32)
    b[:4] = a[[3, 50, 51, 200]]                      # exact copies
    groups = np.repeat(np.arange(5), 46)
    result = audit.cross_nearest(a, b, groups, 6, chunk=32)   # group 5 has no rows
    brute = np.sqrt(((a[:, None].astype(np.float64) - b[None]) ** 2).mean(-1))
    np.testing.assert_allclose(result.a_dist, brute.min(1), atol=1e-6)
    np.testing.assert_array_equal(result.a_index, brute.argmin(1))
    for g in range(5):
        np.testing.assert_allclose(result.group_dist[g], brute[groups == g].min(0), atol=1e-6)
        np.testing.assert_array_equal(result.group_index[g],
                                      np.flatnonzero(groups == g)[brute[groups == g].argmin(0)])
    assert np.isinf(result.group_dist[5]).all() and (result.group_index[5] == -1).all()
    assert (result.group_dist.min(0)[:4] == 0.0).all()
    dist, index = audit.nearest(b, a, chunk=10)
    np.testing.assert_allclose(dist, brute.min(0), atol=1e-6)
    np.testing.assert_array_equal(index[:4], [3, 50, 51, 200])


def test_pair_vectors_use_the_critic_scale():
    images = np.array([[[0.5, -1.0], [0.0, 1.0]]], np.float32)
    labels = np.array([[[1, 0], [0, 1]]], np.uint8)
    np.testing.assert_array_equal(audit.pair_vectors(images, labels),
                                  [[0.5, -1, 0, 1, 1, -1, -1, 1]])


def test_patches_per_patient_cap():
    assert audit.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 0) is None
    assert audit.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 300) is None
    assert audit.patches_per_patient_cap([np.full(5, 60), np.full(1, 60)], 120) == 24
    # 18 x 500 train, 2 x 500 val, 4 x 500 test, cap 1000: 1000 // 18 = 55 from everyone
    assert audit.patches_per_patient_cap(
        [np.full(18, 500), np.full(2, 500), np.full(4, 500)], 1000) == 55
    assert audit.patches_per_patient_cap([np.full(3000, 1)], 10) == 1


def test_ratio_stats_hand_computed():
    s = audit.ratio_stats([1.0, 2.0, 3.0, 1.0], [2.0, 1.0, 3.0, 1.0])
    # ratios 0.5, 2, 1, 1: one below 1, two ties (count half)
    assert s["median"] == pytest.approx(1.0)
    assert s["fraction_below_1"] == pytest.approx(0.5)
    assert s["p5"] == pytest.approx(np.percentile([0.5, 2, 1, 1], 5))
    assert audit.ratio_stats([0.0], [0.0])["fraction_below_1"] == 0.5
    assert audit.ratio_stats([], [])["median"] is None


# --- planted leaks on arrays ----------------------------------------------------------------


def _population(rng, n, patch=8):
    """Smooth-ish random pairs: image in [-1, 1], label = bright pixels."""
    base = rng.normal(size=(n, patch, patch))
    image = np.tanh(base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)).astype(
        np.float32)
    return image, (image > 0.5).astype(np.uint8)


def _real(rng, members=12, nonmembers=8, per_patient=20):
    num = members + nonmembers
    images, labels = _population(rng, num * per_patient)
    return audit.RealPatches(
        images, labels, np.repeat(np.arange(num), per_patient),
        [f"p{i}" for i in range(num)], np.arange(num) < members,
        ["train"] * members + ["val"] * nonmembers)


def test_privacy_bounds_follow_the_privacy_unit():
    real = _real(np.random.default_rng(6), members=3, nonmembers=2, per_patient=4)
    card = {"private": True, "epsilon": 1.0, "delta": 1e-5, "privacy_unit": "patient",
            "patches_per_patient": 8}
    section = audit._privacy_section(card, real)
    assert section["bounds"]["patient_group_size"] == 1
    assert section["bounds"]["per_patient"] == section["bounds"]["per_record"]
    assert section["bounds"]["per_record"]["0.01"] == pytest.approx(math.e * 0.01 + 1e-5)
    section = audit._privacy_section(dict(card, privacy_unit="patch", patches_per_patient=500),
                                     real)
    assert section["bounds"]["patient_group_size"] == 500
    assert section["bounds"]["per_patient"] == {"0.01": 1.0, "0.001": 1.0}
    # a patch-unit card without patches_per_patient: the largest member patient's count
    section = audit._privacy_section(dict(card, privacy_unit="patch",
                                          patches_per_patient=None), real)
    assert section["bounds"]["patient_group_size"] == 4
    for card in ({"private": False, "epsilon": None, "delta": None, "privacy_unit": "patch"},
                 {}):
        assert audit._privacy_section(card, real)["bounds"] is None


def test_planted_copies_are_detected():
    rng = np.random.default_rng(2)
    real = _real(rng)
    copies = np.flatnonzero(real.member)
    fresh_images, fresh_labels = _population(rng, 100)
    syn_images = np.concatenate([real.images[copies] +
                                 0.005 * rng.normal(size=real.images[copies].shape),
                                 fresh_images]).astype(np.float32)
    syn_labels = np.concatenate([real.labels[copies], fresh_labels])
    out = audit.generator_and_memorisation(real, syn_images, syn_labels, seed=0)
    gen = out["generator_attack"]
    assert gen["patch"]["auc"] > 0.95 and gen["patch"]["tpr_at_fpr"]["0.01"] > 0.9
    assert gen["patient"]["auc"] == 1.0
    mem = out["memorisation"]
    assert mem["near_copies"] >= len(copies) and mem["min_d_train"] < 0.01
    # 240 of 340 are copies of training patches; the draws hold 8 of the 12 training patients
    assert mem["ratio"]["fraction_below_1"] > 0.65 and mem["ratio"]["p5"] < 0.05
    assert mem["train_patients_per_draw"] == 8 and mem["held_out_patients"] == 8
    # the closest synthetic pairs point at the training patches they copy
    order = np.argsort(out["_d_train"])[:10]
    np.testing.assert_array_equal(out["_nearest_train"][order], copies[order])


def test_same_distribution_gives_chance_level():
    rng = np.random.default_rng(3)
    real = _real(rng, members=20, nonmembers=20)
    syn_images, syn_labels = _population(rng, 400)
    out = audit.generator_and_memorisation(real, syn_images, syn_labels, seed=0)
    gen = out["generator_attack"]
    assert abs(gen["patch"]["auc"] - 0.5) < 0.08
    assert abs(gen["patient"]["auc"] - 0.5) < 0.25
    mem = out["memorisation"]
    assert abs(mem["ratio"]["fraction_below_1"] - 0.5) < 0.08
    assert abs(mem["ratio"]["median"] - 1.0) < 0.1
    assert mem["near_copy_fraction"] < 0.05


def test_critic_attack_detects_a_memorising_critic():
    """A 'critic' that scores how close a pair is to a member patch."""
    import tensorflow as tf
    rng = np.random.default_rng(4)
    real = _real(rng)
    pairs = np.stack([real.images, 2.0 * real.labels - 1.0], -1)   # as the critic sees them
    memorised = tf.constant(pairs[real.member].reshape(int(real.member.sum()), -1), tf.float32)

    def critic(x, training=False):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        d2 = tf.reduce_sum(tf.square(flat[:, None] - memorised[None]), -1)
        return -tf.reduce_min(d2, axis=1, keepdims=True)

    raw, cal = audit.critic_scores(critic, real.images, real.labels, batch_size=64)
    assert audit.roc_auc(raw[real.member], raw[~real.member]) == 1.0
    assert audit.roc_auc(cal[real.member], cal[~real.member]) > 0.95


def test_critic_calibration_removes_orientation_free_content():
    import tensorflow as tf
    rng = np.random.default_rng(5)
    images, labels = _population(rng, 10)
    weights = tf.constant(rng.normal(size=(1, 8, 8, 2)), tf.float32)
    total = lambda x, training=False: tf.reduce_sum(x, axis=[1, 2, 3])[:, None]
    linear = lambda x, training=False: tf.reduce_sum(x * weights, axis=[1, 2, 3])[:, None]
    raw, cal = audit.critic_scores(total, images, labels, batch_size=4)
    pairs = np.stack([images, 2.0 * labels - 1.0], -1)
    np.testing.assert_allclose(raw, pairs.sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(cal, 0.0, atol=1e-4)   # a sum ignores orientation
    raw, cal = audit.critic_scores(linear, images, labels, batch_size=4)
    w = weights.numpy()[0]
    views = [pairs, pairs[:, ::-1], pairs[:, :, ::-1], pairs[:, ::-1, ::-1]]
    views += [v.transpose(0, 2, 1, 3) for v in views]
    scores = np.stack([(v * w).sum(axis=(1, 2, 3)) for v in views])
    np.testing.assert_allclose(raw, scores[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cal, scores[0] - scores[1:].mean(0), rtol=1e-4, atol=1e-4)
    assert audit.critic_scores(linear, images, labels, calibrate=False)[1] is None


# --- a tiny trained workdir ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(patch_records, tmp_path_factory):
    from test_train import TINY
    from tfdpgan.gan import training
    workdir = str(tmp_path_factory.mktemp("audit") / "w")
    config = training.TrainConfig(workdir=workdir, data=patch_records, epsilon=3.0,
                               **dict(TINY, critic_steps=10))
    training.train(config)
    return workdir


def _small(workdir, **kwargs):
    return audit.AuditConfig(workdir=workdir, num_synthetic=40, max_patches=120, **kwargs)


def test_audit_of_a_trained_workdir(tiny_run):
    result = audit.audit_workdir(_small(tiny_run))
    out = os.path.join(tiny_run, "audit")
    assert sorted(os.listdir(out)) == ["AUDIT.md", "audit.json", "near_copies.png"]
    on_disk = json.load(open(os.path.join(out, "audit.json")))
    assert on_disk == result
    c = result["counts"]
    # patch_records: 5 training patients, 1 val patient, 60 patches each; the cap of 120 per
    # split keeps 120 // 5 = 24 patches of every patient
    assert c == {"member_patients": 5, "nonmember_patients": 1, "member_patches": 120,
                 "nonmember_patches": 24, "nonmember_splits": ["val"],
                 "patches_per_patient_cap": 24}
    assert set(result["attacks"]) == {"critic", "critic_calibrated", "generator"}
    for attack in result["attacks"].values():
        assert 0.0 <= attack["patch"]["auc"] <= 1.0
        assert attack["patch"]["num_members"] == 120 and attack["patch"]["num_nonmembers"] == 24
        assert attack["patient"]["num_members"] == 5 and attack["patient"]["num_nonmembers"] == 1
        assert attack["patient"]["fpr_resolved"] == {"0.01": False, "0.001": False}
    p = result["privacy"]
    card = json.load(open(os.path.join(tiny_run, "privacy.json")))
    assert p["private"] and p["epsilon"] == card["epsilon"] and p["delta"] == card["delta"]
    assert p["bounds"]["per_record"]["0.01"] == pytest.approx(
        min(1.0, math.exp(card["epsilon"]) * 0.01 + card["delta"]))
    mem = result["memorisation"]
    assert mem["num_synthetic"] == 40 and mem["tau"] > 0
    assert 0.0 <= mem["ratio"]["fraction_below_1"] <= 1.0
    assert mem["train_patients_per_draw"] == 1 and mem["held_out_patients"] == 1
    assert mem["held_out_patches"] == mem["train_patches_per_draw_mean"] == 24
    assert [row["member"] for row in result["per_patient"]].count(True) == 5
    text = open(os.path.join(out, "AUDIT.md")).read()
    assert "not a release" in text and "0.5 means no leakage" in text
    assert "Without memorisation ≈ 0.5" in text and "e^ε · FPR + δ" in text
    assert "Canaries" in text
    public = audit.render_markdown(dict(result, privacy={
        "private": False, "epsilon": None, "delta": None, "privacy_unit": "patch",
        "bounds": None}))
    assert "**not private**" in public and "DP bound" not in public
    assert "DP bound @ 1 %" in text
    # the critic restored is the trained one: its scores differ from a fresh critic's
    from tfdpgan.gan import training
    run = json.load(open(os.path.join(tiny_run, "run.json")))
    fresh = training.build_wgan(training.config_from_run(run), 16, run).critic
    import tensorflow as tf
    restored = audit.restore_critic(run, tf.train.latest_checkpoint(
        os.path.join(tiny_run, "checkpoints")), 16)
    x = tf.random.uniform([4, 16, 16, 2], -1, 1, seed=0)
    assert not np.allclose(fresh(x).numpy(), restored(x).numpy())


def test_audit_refuses_bad_input_without_output(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such training workdir"):
        audit.audit_workdir(_small(str(tmp_path / "missing")))
    # a copy without its generator, then without its checkpoints
    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("audit"))
    shutil.rmtree(os.path.join(broken, "generator"))
    with pytest.raises(FileNotFoundError, match="no exported generator"):
        audit.audit_workdir(_small(broken))
    shutil.rmtree(os.path.join(broken, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        audit.audit_workdir(_small(broken))
    assert not os.path.exists(os.path.join(broken, "audit"))
    with pytest.raises(ValueError, match="num_synthetic"):
        audit.audit_workdir(dataclasses_replace(_small(tiny_run), num_synthetic=0))


def dataclasses_replace(config, **kwargs):
    import dataclasses
    return dataclasses.replace(config, **kwargs)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfdpgan.audit", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cli(tiny_run, tmp_path):
    missing = _cli(f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode != 0 and "error:" in missing.stderr
    assert not os.path.exists(tmp_path / "nothing")
    workdir = str(tmp_path / "w")
    shutil.copytree(tiny_run, workdir, ignore=shutil.ignore_patterns("audit"))
    args = [f"--workdir={workdir}", "--num_synthetic=30", "--max_patches=60", "--seed=1"]
    done = _cli(*args, "--nocalibrate")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUC" in done.stdout and "near-copies" in done.stdout and "DP bound" in done.stdout
    result = json.load(open(os.path.join(workdir, "audit", "audit.json")))
    assert result["memorisation"]["num_synthetic"] == 30 and result["settings"]["seed"] == 1
    assert result["counts"]["patches_per_patient_cap"] == 12
    assert "critic_calibrated" not in result["attacks"]
    again = _cli(*args)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert json.load(open(os.path.join(workdir, "audit", "audit.json"))) == result
    replaced = audit.audit_workdir(_small(workdir, overwrite=True))
    assert json.load(open(os.path.join(workdir, "audit", "audit.json"))) == replaced
    assert "critic_calibrated" in replaced["attacks"]
    assert not [name for name in os.listdir(workdir) if name.startswith(".audit")]
