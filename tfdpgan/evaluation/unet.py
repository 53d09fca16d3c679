"""The segmentation U-Net that measures the utility of (synthetic) patches (Kossen et al. 2022).

Architecture: the "half U-Net" of Livne et al. (2019), i.e. the U-Net of Ronneberger et al.
with half the filters: ``depth`` max-pooling levels with base * 2**i filters (32-64-128-256-512
at base 32, depth 4), each level two 3x3 conv + ReLU ("same" padding, dropout between the two
convolutions), up-sampling (nearest, no up-convolution) + concatenation with the skip
connection on the way up, and a 1x1 conv + sigmoid. No batch normalisation.

Training (train_unet): Adam on soft Dice + binary cross-entropy (``loss="dice_bce"``, the
default; ``"dice"`` is the former soft-Dice-only loss). The output bias starts at the logit of
the label prior (the share of vessel pixels in the training labels), so the first predictions
are the base rate instead of 0.5 everywhere. The weights kept are those of the epoch with the
best Dice on the VALIDATION set; test volumes are never an input here.

Collapse (a U-Net trained on synthetic pairs falling into the empty-prediction state, soft
Dice stuck near 1; seen with ε = 3 generators at the default learning rate) is detected and
answered with a restart: a model is *collapsed* when it predicts no vessel pixel (probability
> threshold) on a fixed probe of training patches AND scores validation Dice 0, either for
``collapse_patience`` epochs while its loss has stopped falling (< 1 % over those epochs), or at
the end of training (the selected epoch). A collapsed attempt is discarded and training
restarts from a fresh initialisation (another seed), with the learning rate halved and the
cross-entropy class-balanced (positive weight (1 - p) / p for label prior p, output bias 0),
at most ``max_restarts`` times (never when the training labels hold no vessel pixel at all:
then an empty prediction is what the data teach). ``history`` records every attempt.
"""
import dataclasses
import time
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

Arrays = Tuple[np.ndarray, np.ndarray]   # images [N, P, P] (normalised), labels [N, P, P] {0, 1}
# A validation scorer: model -> score to maximise (e.g. whole-volume Dice of validation
# patients, see evaluate.py). It must not look at test data.
Scorer = Callable[[tf.keras.Model], float]

__all__ = ["Arrays", "Scorer", "LOSSES", "UNetConfig", "build_unet", "soft_dice_loss",
           "dice_bce_loss", "label_prior", "prior_bias", "patch_dataset", "dataset_dice",
           "is_collapsed", "train_unet", "train_unet_grid", "intensity_augment"]

LOSSES = ("dice_bce", "dice")
PROBE_PATCHES = 256          # training patches predicted after every epoch (collapse check)
STUCK_TOLERANCE = 0.01       # relative loss decrease below which the loss counts as stuck


def build_unet(patch_size: Optional[int] = None, base_filters: int = 32, depth: int = 4,
               dropout: float = 0.0, output_bias: float = 0.0) -> tf.keras.Model:
    """Image [B, H, W, 1] in [-1, 1] -> vessel probability [B, H, W, 1].

    ``output_bias`` initialises the bias of the final 1x1 convolution (the logit of the
    probability predicted before training; prior_bias of the label prior).

    With ``patch_size`` None the model is fully convolutional ([None, None, None, 1]); any
    H, W divisible by 2**depth work (e.g. whole slices).
    """
    if patch_size is not None and patch_size % 2**depth:
        raise ValueError(f"patch_size {patch_size} is not divisible by 2**depth = {2**depth}")
    layers = tf.keras.layers

    def block(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu")(x)

    image = tf.keras.Input((patch_size, patch_size, 1), name="image")
    x, skips = image, []
    for level in range(depth):
        x = block(x, base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Concatenate()([layers.UpSampling2D(2)(x), skips[level]])
        x = block(x, base_filters * 2**level)
    prob = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="prob",
                         bias_initializer=tf.keras.initializers.Constant(output_bias))(x)
    return tf.keras.Model(image, prob, name="unet")


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """1 - soft Dice over the whole batch (pooled, so patches without vessels are fine)."""
    y_true = tf.cast(y_true, y_pred.dtype)
    intersection = tf.reduce_sum(y_true * y_pred)
    return 1.0 - (2.0 * intersection + smooth) / (
        tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + smooth)


def dice_bce_loss(y_true: tf.Tensor, y_pred: tf.Tensor, pos_weight: float = 1.0) -> tf.Tensor:
    """soft_dice_loss + pixel-mean binary cross-entropy (positives weighted by ``pos_weight``).

    The cross-entropy keeps a gradient when the prediction is empty everywhere, where soft
    Dice alone flattens (its collapse state)."""
    y_true = tf.cast(y_true, y_pred.dtype)
    p = tf.clip_by_value(y_pred, 1e-7, 1.0 - 1e-7)
    bce = -tf.reduce_mean(pos_weight * y_true * tf.math.log(p)
                          + (1.0 - y_true) * tf.math.log(1.0 - p))
    return soft_dice_loss(y_true, y_pred) + bce


def label_prior(labels) -> float:
    """Share of vessel pixels (label > 0) in ``labels`` [N, P, P] (memory-mapped is fine)."""
    labels = np.asarray(labels)
    total = positive = 0
    for start in range(0, len(labels), 1024):
        chunk = np.asarray(labels[start:start + 1024]) > 0
        total, positive = total + chunk.size, positive + int(np.count_nonzero(chunk))
    return positive / total if total else 0.0


def prior_bias(prior: float) -> float:
    """The logit of ``prior`` (clipped to [1e-3, 0.5]): the output bias that makes the untrained
    U-Net predict the base rate."""
    p = min(max(prior, 1e-3), 0.5)
    return math.log(p / (1.0 - p))


def _dihedral(image: tf.Tensor, label: tf.Tensor, bits: tf.Tensor):
    """Per example one of the 8 flips/90-degree rotations, chosen by the low 3 bits of ``bits``
    [B]: optional transpose, then optional flip of each axis (patches must be square)."""
    bits = bits[:tf.shape(image)[0]]

    def choose(bit, transform, x):
        return tf.where(tf.reshape(bits // bit % 2 == 1, [-1, 1, 1, 1]), transform(x), x)

    for bit, transform in ((1, lambda x: tf.transpose(x, [0, 2, 1, 3])),
                           (2, lambda x: tf.reverse(x, [1])),
                           (4, lambda x: tf.reverse(x, [2]))):
        image, label = choose(bit, transform, image), choose(bit, transform, label)
    return image, label


# Intensity augmentation ranges (nnU-Net's brightness/contrast/gamma augmentation, plus a
# linear bias ramp): per patch, on the [0, 1] intensity (x + 1) / 2, u -> clip(s * ramp * u**g)
# with s ~ U(1 - SCALE, 1 + SCALE), g = exp(U(-log GAMMA, log GAMMA)) and
# ramp = exp(a * x + b * y) for a, b ~ U(-RAMP, RAMP) over patch coordinates x, y in [-1/2, 1/2].
INTENSITY_SCALE = 0.25
INTENSITY_GAMMA = 1.5
INTENSITY_RAMP = 0.4


def intensity_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random brightness, gamma and bias ramp per patch of ``image`` [B, P, P, 1] in [-1, 1]
    (stateless: ``seed`` is a [2] integer tensor). Background (-1) stays -1; the result stays in
    [-1, 1]. Labels are untouched: a vessel stays a vessel under a monotone intensity change."""
    batch, size = tf.shape(image)[0], tf.shape(image)[1]
    r = tf.random.stateless_uniform([batch, 4], seed, minval=-1.0, maxval=1.0)
    scale = tf.reshape(1.0 + INTENSITY_SCALE * r[:, 0], [-1, 1, 1, 1])
    gamma = tf.reshape(tf.exp(math.log(INTENSITY_GAMMA) * r[:, 1]), [-1, 1, 1, 1])
    coords = (tf.cast(tf.range(size), tf.float32)
              / tf.cast(tf.maximum(size - 1, 1), tf.float32) - 0.5)
    slope_rows, slope_cols = (tf.reshape(r[:, k], [-1, 1, 1, 1]) for k in (2, 3))
    ramp = tf.exp(INTENSITY_RAMP * (slope_rows * coords[None, :, None, None]
                                    + slope_cols * coords[None, None, :, None]))
    u = tf.clip_by_value((image + 1.0) / 2.0, 0.0, 1.0)
    u = tf.clip_by_value(scale * ramp * tf.pow(u, gamma), 0.0, 1.0)
    return 2.0 * u - 1.0


def patch_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  shuffle: bool = False, seed: int = 0, augment: bool = False,
                  intensity: bool = False) -> tf.data.Dataset:
    """One pass over the patches as (image, label) float32 batches [B, P, P, 1].

    ``images`` [N, P, P] (normalised) and ``labels`` [N, P, P] may be memory-mapped (e.g.
    pipeline.load_arrays with a cache_dir): batches are gathered by index, never copied whole
    into the graph. ``shuffle`` reshuffles every pass; ``augment`` applies a random flip/
    90-degree rotation per patch, ``intensity`` a random intensity change (intensity_augment);
    all deterministic for a given seed and pass.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    patch = images.shape[1]
    ds = tf.data.Dataset.range(len(images))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def gather(index):
        return (np.asarray(images[index], np.float32)[..., None],
                np.asarray(labels[index], np.float32)[..., None])

    def load(index):
        image, label = tf.numpy_function(gather, [index], (tf.float32, tf.float32))
        shape = [None, patch, patch, 1]
        return tf.ensure_shape(image, shape), tf.ensure_shape(label, shape)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        bits = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, bits.batch(batch_size))).map(
            lambda pair, r: _dihedral(*pair, r), num_parallel_calls=tf.data.AUTOTUNE)
    if intensity:
        seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds.batch(2))).map(
            lambda pair, r: (intensity_augment(pair[0], r), pair[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    # No autotuning: with it (TF 2.15), deleting a partially consumed iterator, as
    # train_unet does after its last epoch of steps_per_epoch steps, blocked for 10-40 s on
    # a 2-core CPU (the autotune thread); the fixed defaults are as fast here.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    base_filters: int = 32
    depth: int = 4
    dropout: float = 0.0
    learning_rate: float = 1e-4
    batch_size: int = 32              # used when train/val are given as arrays
    augment: bool = False             # likewise (random flips / 90-degree rotations)
    intensity_augment: bool = False   # likewise (random brightness/gamma/bias ramp)
    epochs: int = 10
    steps_per_epoch: Optional[int] = None   # None: one pass over the training data
    threshold: float = 0.5            # on the probability, for the validation Dice
    seed: int = 0
    loss: str = "dice_bce"            # LOSSES; restarts after a collapse always use dice_bce
    max_restarts: int = 2             # re-initialisations after a detected collapse
    collapse_patience: int = 2        # epochs empty + stuck before restarting early
    early_stop_patience: int = 3      # stop after this many epochs without a better val
                                      # score (0: never); a perfect score (1.0) stops at once


def dataset_dice(model: tf.keras.Model, dataset: tf.data.Dataset,
                 threshold: float = 0.5) -> float:
    """Dice of (prob > threshold) pooled over all pixels of all batches (1.0 if both empty)."""
    overlap = both = 0.0
    for image, label in dataset:
        pred = model(image, training=False).numpy() > threshold
        label = label.numpy() > 0
        overlap += np.count_nonzero(pred & label)
        both += np.count_nonzero(pred) + np.count_nonzero(label)
    return 1.0 if both == 0 else 2.0 * overlap / both


def is_collapsed(losses: Sequence[float], val_dice: Sequence[float],
                 probe_positives: Sequence[int], patience: int) -> bool:
    """Early collapse test after an epoch: for the last ``patience`` epochs the model predicted
    no vessel pixel on the probe patches and scored validation Dice 0, and its loss fell by less
    than STUCK_TOLERANCE (relative) over them."""
    if patience < 1 or len(losses) <= patience:
        return False
    empty = (all(d <= 0.0 for d in val_dice[-patience:])
             and all(p == 0 for p in probe_positives[-patience:]))
    before = losses[-patience - 1]
    stuck = min(losses[-patience:]) > before - STUCK_TOLERANCE * abs(before)
    return empty and stuck


def _as_dataset(data, config: UNetConfig, training: bool) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    images, labels = data
    return patch_dataset(images, labels, config.batch_size, shuffle=training, seed=config.seed,
                         augment=training and config.augment,
                         intensity=training and config.intensity_augment)


def _validation_score(model: tf.keras.Model, val, config: UNetConfig) -> float:
    if callable(val):
        return float(val(model))
    return dataset_dice(model, val, config.threshold)


def _probe_and_prior(train) -> Tuple[np.ndarray, float]:
    """(probe images [<= PROBE_PATCHES, P, P, 1], label prior) of the training data: evenly
    spaced patches of arrays, or the first batches of a dataset."""
    if isinstance(train, tf.data.Dataset):
        images, labels, n = [], [], 0
        for image, label in train:
            images.append(image.numpy())
            labels.append(label.numpy())
            n += len(images[-1])
            if n >= PROBE_PATCHES:
                break
        images, labels = np.concatenate(images), np.concatenate(labels)
        return images[:PROBE_PATCHES], float(np.mean(labels > 0))
    images, labels = train
    pick = np.unique(np.linspace(0, len(images) - 1, min(PROBE_PATCHES, len(images))).astype(int))
    return np.asarray(images[pick], np.float32)[..., None], label_prior(labels)


def _positives(model: tf.keras.Model, probe: np.ndarray, threshold: float) -> int:
    count = 0
    for start in range(0, len(probe), 64):
        prob = model(probe[start:start + 64], training=False).numpy()
        count += int(np.count_nonzero(prob > threshold))
    return count


def _attempt_settings(config: UNetConfig, attempt: int, prior: float) -> dict:
    """Seed, learning rate, loss, output bias and positive weight of attempt 0, 1, ..."""
    if attempt == 0:
        dice_bce = config.loss == "dice_bce"
        return {"seed": config.seed, "learning_rate": config.learning_rate, "loss": config.loss,
                "output_bias": prior_bias(prior) if dice_bce else 0.0, "pos_weight": 1.0}
    balanced = (1.0 - prior) / prior if prior > 0 else 1.0
    return {"seed": config.seed + 1000 * attempt,
            "learning_rate": config.learning_rate * 0.5 ** attempt, "loss": "dice_bce",
            "output_bias": 0.0, "pos_weight": float(min(max(balanced, 1.0), 100.0))}


def _no_progress(h: dict, epoch: int, patience: int) -> bool:
    """Early stop: the best validation score is perfect, or ``patience`` epochs old."""
    return patience > 0 and (h["best_val_dice"] >= 1.0 or epoch - h["best_epoch"] >= patience)


def _train_attempt(train_ds, val_ds, config: UNetConfig, settings: dict, probe) -> dict:
    """One training from a fresh initialisation; stops early on a collapse (is_collapsed)."""
    tf.keras.utils.set_random_seed(settings["seed"])
    model = build_unet(None, config.base_filters, config.depth, config.dropout,
                       settings["output_bias"])
    optimizer = tf.keras.optimizers.Adam(settings["learning_rate"])
    pos_weight = settings["pos_weight"]
    loss_fn = (soft_dice_loss if settings["loss"] == "dice"
               else lambda y, p: dice_bce_loss(y, p, pos_weight))

    @tf.function
    def step(image, label):
        with tf.GradientTape() as tape:
            loss = loss_fn(label, model(image, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    if config.steps_per_epoch:
        batches = iter(train_ds.repeat())
        epoch_batches = lambda: (next(batches) for _ in range(config.steps_per_epoch))
    else:
        epoch_batches = lambda: train_ds
    h = {"settings": settings, "loss": [], "val_dice": [], "probe_positives": [],
         "best_epoch": -1, "best_val_dice": -1.0, "collapsed": False, "best_weights": None}
    best_positives, start = 0, time.time()
    for epoch in range(config.epochs):
        losses = [float(step(image, label)) for image, label in epoch_batches()]
        h["loss"].append(float(np.mean(losses)))
        h["val_dice"].append(_validation_score(model, val_ds, config))
        h["probe_positives"].append(_positives(model, probe, config.threshold))
        if h["val_dice"][-1] > h["best_val_dice"]:
            h["best_epoch"], h["best_val_dice"] = epoch, h["val_dice"][-1]
            h["best_weights"], best_positives = model.get_weights(), h["probe_positives"][-1]
        logging.info("U-Net epoch %d/%d: loss %.4f, val Dice %.4f (best %.4f at epoch %d), "
                     "%d probe pixels predicted, %.0f s", epoch + 1, config.epochs,
                     h["loss"][-1], h["val_dice"][-1], h["best_val_dice"], h["best_epoch"] + 1,
                     h["probe_positives"][-1], time.time() - start)
        if is_collapsed(h["loss"], h["val_dice"], h["probe_positives"], config.collapse_patience):
            h["collapsed"] = True
            break
        if _no_progress(h, epoch, config.early_stop_patience):
            break
    # The selected epoch predicts nothing anywhere: collapsed as well.
    h["collapsed"] = h["collapsed"] or (h["best_val_dice"] <= 0.0 and best_positives == 0)
    model.set_weights(h["best_weights"])
    return dict(h, model=model)


def train_unet(train: Union[tf.data.Dataset, Arrays],
               val: Union[tf.data.Dataset, Arrays, Scorer],
               config: UNetConfig = UNetConfig()) -> Tuple[tf.keras.Model, dict]:
    """Train a U-Net; returns (model with the best-validation-Dice weights, history).

    ``train``/``val``: finite datasets of (image, label) [B, P, P, 1] batches, or (images,
    labels) arrays turned into such with patch_dataset (config.batch_size, config.augment;
    only train is shuffled/augmented). ``val`` may also be a Scorer (model -> Dice, e.g. of
    whole validation volumes), called after every epoch. Model selection uses ``val`` only,
    never test data. Sets the global random seeds (tf.keras.utils.set_random_seed).
    A collapsed attempt (module docstring) is restarted up to ``config.max_restarts`` times.
    Training stops early after ``config.early_stop_patience`` epochs without a better
    validation score. history (of the last attempt): per-epoch ``loss`` (mean training loss)
    and ``val_dice`` (as many as epochs run),
    ``best_epoch`` (0-based argmax of val_dice; the first on ties), ``best_val_dice``; plus
    ``label_prior``, ``restarts``, ``collapsed`` (the returned model still is) and
    ``attempts`` (per attempt: settings, loss, val_dice, probe_positives, collapsed).
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be positive, got {config.epochs}")
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    tf.keras.utils.set_random_seed(config.seed)
    train_ds = _as_dataset(train, config, True)
    val_ds = val if callable(val) else _as_dataset(val, config, False)
    probe, prior = _probe_and_prior(train)
    attempts = []
    for attempt in range(config.max_restarts + 1):
        result = _train_attempt(train_ds, val_ds, config,
                                _attempt_settings(config, attempt, prior), probe)
        attempts.append({k: result[k] for k in ("settings", "loss", "val_dice",
                                                "probe_positives", "collapsed")})
        if not result["collapsed"] or prior == 0.0:   # no vessel labels: nothing to restart for
            break
        logging.warning("U-Net collapsed (empty prediction, loss %.4f) in attempt %d%s",
                        result["loss"][-1], attempt + 1,
                        "; restarting" if attempt < config.max_restarts else "; giving up")
    history = {k: result[k] for k in ("loss", "val_dice", "best_epoch", "best_val_dice",
                                      "collapsed")}
    history.update(label_prior=prior, restarts=len(attempts) - 1, attempts=attempts)
    return result["model"], history


def train_unet_grid(train: Union[tf.data.Dataset, Arrays],
                    val: Union[tf.data.Dataset, Arrays, Scorer],
                    configs: Sequence[UNetConfig]) -> Tuple[tf.keras.Model, UNetConfig, List]:
    """Train every config (e.g. a grid over learning rate, dropout, augmentation) and pick the
    one with the best validation Dice among those that did not end collapsed (all of them if
    every one did); returns (model, config, [(config, history), ...])."""
    results, best = [], None
    for config in configs:
        model, history = train_unet(train, val, config)
        results.append((config, history))
        logging.info("U-Net grid %d/%d %s: best val Dice %.4f%s", len(results), len(configs),
                     config, history["best_val_dice"],
                     " (collapsed)" if history["collapsed"] else "")
        rank = (not history["collapsed"], history["best_val_dice"])
        if best is None or rank > best[2]:
            best = (model, config, rank)
    return best[0], best[1], results
