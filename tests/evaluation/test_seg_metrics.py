import math

import numpy as np
import pytest

from tfdpgan.evaluation import seg_metrics

SPACING = (0.5, 0.5, 0.7)


def _points(shape, *voxels):
    volume = np.zeros(shape, np.uint8)
    for voxel in voxels:
        volume[voxel] = 1
    return volume


def test_dice_hand_computed():
    pred = np.zeros((6, 6, 6), np.uint8)
    truth = np.zeros_like(pred)
    pred[1:3, 1:3, 1:3] = 1    # 8 voxels
    truth[2:4, 1:3, 1:3] = 1   # 8 voxels, 4 shared
    assert seg_metrics.dice(pred, truth) == pytest.approx(2 * 4 / 16)
    # Two-voxel shapes sharing one voxel: 2 * 1 / (2 + 2).
    assert seg_metrics.dice(_points((4,), 0, 1), _points((4,), 1, 2)) == pytest.approx(0.5)
    assert seg_metrics.dice(pred, pred) == 1.0


def test_dice_empty_conventions():
    empty, some = np.zeros((3, 3, 3)), _points((3, 3, 3), (1, 1, 1))
    assert seg_metrics.dice(empty, empty) == 1.0
    assert seg_metrics.dice(some, empty) == 0.0
    assert seg_metrics.dice(empty, some) == 0.0


def test_hausdorff95_single_voxels_anisotropic():
    shape = (10, 10, 10)
    # Separated by 3 voxels along z (0.7 mm) and by 6 along x (0.5 mm).
    assert seg_metrics.hausdorff95(_points(shape, (4, 4, 2)), _points(shape, (4, 4, 5)),
                               SPACING) == pytest.approx(3 * 0.7)
    assert seg_metrics.hausdorff95(_points(shape, (1, 4, 4)), _points(shape, (7, 4, 4)),
                               SPACING) == pytest.approx(6 * 0.5)
    # Diagonal: sqrt((2 * 0.5)^2 + (1 * 0.7)^2).
    assert seg_metrics.hausdorff95(_points(shape, (2, 4, 4)), _points(shape, (4, 4, 5)),
                               SPACING) == pytest.approx(math.hypot(1.0, 0.7))


def test_hausdorff95_planes():
    pred, truth = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    pred[:, :, 1] = 1
    truth[:, :, 4] = 1
    assert seg_metrics.hausdorff95(pred, truth, SPACING) == pytest.approx(3 * 0.7)


def test_hausdorff95_is_a_percentile_not_the_maximum():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:8, 2:8, 2:8] = 1                 # 152 surface voxels
    pred = truth.copy()
    pred[17, 17, 17] = 1                     # one outlier: 1 of 305 pooled distances
    assert seg_metrics.hausdorff95(pred, truth, SPACING) == 0.0
    assert seg_metrics.hausdorff95(truth, truth, SPACING) == 0.0


def test_hausdorff95_empty_conventions():
    empty, some = np.zeros((5, 5, 5)), _points((5, 5, 5), (2, 2, 2))
    assert seg_metrics.hausdorff95(empty, some, SPACING) == math.inf
    assert seg_metrics.hausdorff95(some, empty, SPACING) == math.inf
    assert seg_metrics.hausdorff95(empty, empty, SPACING) == 0.0


def test_best_threshold_dice_separable():
    image = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    truth = np.array([0, 0, 1, 1, 1])
    assert seg_metrics.best_threshold_dice(image, truth, np.ones(5)) == (3.0, 1.0)


def test_best_threshold_dice_matches_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.random((12, 12, 6)) < 0.1
    image = np.round(rng.normal(size=truth.shape) + 1.5 * truth, 1)   # with ties
    mask = np.ones(truth.shape, np.uint8)
    mask[:2] = 0
    image[0] = 10.0   # bright voxels outside the mask are never predicted
    brute = max(seg_metrics.dice((image >= t) & (mask > 0), truth) for t in np.unique(image))
    threshold, best = seg_metrics.best_threshold_dice(image, truth, mask)
    assert best == pytest.approx(brute)
    assert seg_metrics.dice((image >= threshold) & (mask > 0), truth) == pytest.approx(best)


def test_best_threshold_dice_empty_truth():
    assert seg_metrics.best_threshold_dice(np.arange(4.0), np.zeros(4), np.ones(4)) == \
        (math.inf, 1.0)


def test_hausdorff95_pooled_percentile_hand_computed():
    # pred {(0,0,0)}, truth {(0,0,2), (0,0,3)} at 0.7 mm along z (single voxels are their own
    # surface): pred->truth [1.4], truth->pred [1.4, 2.1]; pooled [1.4, 1.4, 2.1], and the
    # linearly interpolated 95th percentile is at rank 0.95 * 2 = 1.9: 1.4 + 0.9 * 0.7.
    shape = (3, 3, 5)
    pred, truth = _points(shape, (0, 0, 0)), _points(shape, (0, 0, 2), (0, 0, 3))
    assert seg_metrics.hausdorff95(pred, truth, SPACING) == pytest.approx(1.4 + 0.9 * 0.7)
    # the same geometry along x (0.5 mm) gives a different distance: spacing is per axis
    pred_x = _points((5, 3, 3), (0, 0, 0))
    truth_x = _points((5, 3, 3), (2, 0, 0), (3, 0, 0))
    assert seg_metrics.hausdorff95(pred_x, truth_x, SPACING) == pytest.approx(1.0 + 0.9 * 0.5)


def test_hausdorff95_uses_surfaces_of_solid_objects():
    # Two 4x4x4 cubes shifted by 2 voxels along z: every surface voxel of one is at most
    # 2 voxels (1.4 mm) from the other's surface, and the 95th percentile reaches it.
    pred, truth = np.zeros((8, 8, 10), np.uint8), np.zeros((8, 8, 10), np.uint8)
    pred[2:6, 2:6, 2:6] = 1
    truth[2:6, 2:6, 4:8] = 1
    assert seg_metrics.hausdorff95(pred, truth, SPACING) == pytest.approx(2 * 0.7)
    assert seg_metrics.dice(pred, truth) == pytest.approx(2 * 32 / 128)
