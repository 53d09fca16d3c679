"""Nearest-neighbour distances, memorisation ratios and planted leaks on arrays."""
import numpy as np
import pytest

from tfdpgan.leakage import distances


def test_cross_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (230, 40)).astype(np.float32)
    b = rng.uniform(-1, 1, (57, 40)).astype(np.float32)
    b[:4] = a[[3, 50, 51, 200]]                      # exact copies
    groups = np.repeat(np.arange(5), 46)
    result = distances.cross_nearest(a, b, groups, 6, chunk=32)   # group 5 has no rows
    brute = np.sqrt(((a[:, None].astype(np.float64) - b[None]) ** 2).mean(-1))
    np.testing.assert_allclose(result.a_dist, brute.min(1), atol=1e-6)
    np.testing.assert_array_equal(result.a_index, brute.argmin(1))
    for g in range(5):
        np.testing.assert_allclose(result.group_dist[g], brute[groups == g].min(0), atol=1e-6)
        np.testing.assert_array_equal(result.group_index[g],
                                      np.flatnonzero(groups == g)[brute[groups == g].argmin(0)])
    assert np.isinf(result.group_dist[5]).all() and (result.group_index[5] == -1).all()
    assert (result.group_dist.min(0)[:4] == 0.0).all()
    dist, index = distances.nearest(b, a, chunk=10)
    np.testing.assert_allclose(dist, brute.min(0), atol=1e-6)
    np.testing.assert_array_equal(index[:4], [3, 50, 51, 200])


def test_pair_vectors_use_the_critic_scale():
    images = np.array([[[0.5, -1.0], [0.0, 1.0]]], np.float32)
    labels = np.array([[[1, 0], [0, 1]]], np.uint8)
    np.testing.assert_array_equal(distances.pair_vectors(images, labels),
                                  [[0.5, -1, 0, 1, 1, -1, -1, 1]])


def test_ratio_stats_hand_computed():
    s = distances.ratio_stats([1.0, 2.0, 3.0, 1.0], [2.0, 1.0, 3.0, 1.0])
    # ratios 0.5, 2, 1, 1: one below 1, two ties (count half)
    assert s["median"] == pytest.approx(1.0)
    assert s["fraction_below_1"] == pytest.approx(0.5)
    assert s["p5"] == pytest.approx(np.percentile([0.5, 2, 1, 1], 5))
    assert distances.ratio_stats([0.0], [0.0])["fraction_below_1"] == 0.5
    assert distances.ratio_stats([], [])["median"] is None


def test_planted_copies_are_detected(population, make_real):
    rng = np.random.default_rng(2)
    real = make_real(rng)
    copies = np.flatnonzero(real.member)
    fresh_images, fresh_labels = population(rng, 100)
    syn_images = np.concatenate([real.images[copies] +
                                 0.005 * rng.normal(size=real.images[copies].shape),
                                 fresh_images]).astype(np.float32)
    syn_labels = np.concatenate([real.labels[copies], fresh_labels])
    out = distances.generator_and_memorisation(real, syn_images, syn_labels, seed=0)
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


def test_same_distribution_gives_chance_level(population, make_real):
    rng = np.random.default_rng(3)
    real = make_real(rng, members=20, nonmembers=20)
    syn_images, syn_labels = population(rng, 400)
    out = distances.generator_and_memorisation(real, syn_images, syn_labels, seed=0)
    gen = out["generator_attack"]
    assert abs(gen["patch"]["auc"] - 0.5) < 0.08
    assert abs(gen["patient"]["auc"] - 0.5) < 0.25
    mem = out["memorisation"]
    assert abs(mem["ratio"]["fraction_below_1"] - 0.5) < 0.08
    assert abs(mem["ratio"]["median"] - 1.0) < 0.1
    assert mem["near_copy_fraction"] < 0.05
