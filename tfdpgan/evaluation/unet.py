"""The segmentation U-Net that measures the utility of (synthetic) patches (Kossen et al. 2022).

Architecture: the "half U-Net" of Livne et al. (2019), i.e. the U-Net of Ronneberger et al.
with half the filters: ``depth`` max-pooling levels with base * 2**i filters (32-64-128-256-512
at base 32, depth 4), each level two 3x3 conv + ReLU ("same" padding, dropout between the two
convolutions), up-sampling (nearest, no up-convolution) + concatenation with the skip
connection on the way up, and a 1x1 conv + sigmoid. No batch normalisation.

Training: Adam on the soft-Dice loss; the weights kept are those of the epoch with the best
Dice on the VALIDATION patches. Test volumes are never an input here.
"""
import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

Arrays = Tuple[np.ndarray, np.ndarray]   # images [N, P, P] (normalised), labels [N, P, P] {0, 1}
# A validation scorer: model -> score to maximise (e.g. whole-volume Dice of validation
# patients, see evaluate.py). It must not look at test data.
Scorer = Callable[[tf.keras.Model], float]


def build_unet(patch_size: Optional[int] = None, base_filters: int = 32, depth: int = 4,
               dropout: float = 0.0) -> tf.keras.Model:
    """Image [B, H, W, 1] in [-1, 1] -> vessel probability [B, H, W, 1].

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
    prob = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="prob")(x)
    return tf.keras.Model(image, prob, name="unet")


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """1 - soft Dice over the whole batch (pooled, so patches without vessels are fine)."""
    y_true = tf.cast(y_true, y_pred.dtype)
    intersection = tf.reduce_sum(y_true * y_pred)
    return 1.0 - (2.0 * intersection + smooth) / (
        tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + smooth)


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


def patch_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  shuffle: bool = False, seed: int = 0, augment: bool = False) -> tf.data.Dataset:
    """One pass over the patches as (image, label) float32 batches [B, P, P, 1].

    ``images`` [N, P, P] (normalised) and ``labels`` [N, P, P] may be memory-mapped (e.g.
    pipeline.load_arrays with a cache_dir): batches are gathered by index, never copied whole
    into the graph. ``shuffle`` reshuffles every pass; ``augment`` applies a random flip/
    90-degree rotation per patch (both deterministic for a given seed and pass).
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
    epochs: int = 10
    steps_per_epoch: Optional[int] = None   # None: one pass over the training data
    threshold: float = 0.5            # on the probability, for the validation Dice
    seed: int = 0


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


def _as_dataset(data, config: UNetConfig, training: bool) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    images, labels = data
    return patch_dataset(images, labels, config.batch_size, shuffle=training, seed=config.seed,
                         augment=training and config.augment)


def _validation_score(model: tf.keras.Model, val, config: UNetConfig) -> float:
    if callable(val):
        return float(val(model))
    return dataset_dice(model, val, config.threshold)


def train_unet(train: Union[tf.data.Dataset, Arrays],
               val: Union[tf.data.Dataset, Arrays, Scorer],
               config: UNetConfig = UNetConfig()) -> Tuple[tf.keras.Model, dict]:
    """Train a U-Net; returns (model with the best-validation-Dice weights, history).

    ``train``/``val``: finite datasets of (image, label) [B, P, P, 1] batches, or (images,
    labels) arrays turned into such with patch_dataset (config.batch_size, config.augment;
    only train is shuffled/augmented). ``val`` may also be a Scorer (model -> Dice, e.g. of
    whole validation volumes), called after every epoch. Model selection uses ``val`` only,
    never test data.
    Sets the global random seeds (tf.keras.utils.set_random_seed) to config.seed.
    history: per-epoch ``loss`` (mean training soft-Dice loss) and ``val_dice``, plus
    ``best_epoch`` (0-based argmax of val_dice; the first on ties) and ``best_val_dice``.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be positive, got {config.epochs}")
    tf.keras.utils.set_random_seed(config.seed)
    train_ds = _as_dataset(train, config, True)
    val_ds = val if callable(val) else _as_dataset(val, config, False)
    model = build_unet(None, config.base_filters, config.depth, config.dropout)
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def step(image, label):
        with tf.GradientTape() as tape:
            loss = soft_dice_loss(label, model(image, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    if config.steps_per_epoch:
        batches = iter(train_ds.repeat())
        epoch_batches = lambda: (next(batches) for _ in range(config.steps_per_epoch))
    else:
        epoch_batches = lambda: train_ds
    history = {"loss": [], "val_dice": [], "best_epoch": -1, "best_val_dice": -1.0}
    best_weights, start = None, time.time()
    for epoch in range(config.epochs):
        losses = [float(step(image, label)) for image, label in epoch_batches()]
        val_dice = _validation_score(model, val_ds, config)
        history["loss"].append(float(np.mean(losses)))
        history["val_dice"].append(val_dice)
        if val_dice > history["best_val_dice"]:
            history["best_epoch"], history["best_val_dice"] = epoch, val_dice
            best_weights = model.get_weights()
        logging.info("U-Net epoch %d/%d: loss %.4f, val Dice %.4f (best %.4f at epoch %d), "
                     "%.0f s", epoch + 1, config.epochs, history["loss"][-1], val_dice,
                     history["best_val_dice"], history["best_epoch"] + 1, time.time() - start)
    model.set_weights(best_weights)
    return model, history


def train_unet_grid(train: Union[tf.data.Dataset, Arrays],
                    val: Union[tf.data.Dataset, Arrays, Scorer],
                    configs: Sequence[UNetConfig]) -> Tuple[tf.keras.Model, UNetConfig, List]:
    """Train every config (e.g. a grid over learning rate, dropout, augmentation) and pick the
    one with the best validation Dice; returns (model, config, [(config, history), ...])."""
    results, best = [], None
    for config in configs:
        model, history = train_unet(train, val, config)
        results.append((config, history))
        logging.info("U-Net grid %d/%d %s: best val Dice %.4f", len(results), len(configs),
                     config, history["best_val_dice"])
        if best is None or history["best_val_dice"] > best[2]:
            best = (model, config, history["best_val_dice"])
    return best[0], best[1], results
