"""The settings of an evaluation (EvalConfig) and the U-Net grid it selects from.

Defaults are CPU-sized (the paper's scale is flags/sweep_paper.cfg). The default model
selection is ``synthetic_val`` (held-out synthetic patches: privacy-free post-processing of
the generator) among a 2-point learning-rate grid; ``real_val`` (the paper's way) uses the real
validation patients, private data outside the DP guarantee, and the report says so.
"""
import dataclasses
import itertools
from typing import List, Optional

from tfdpgan import errors
from tfdpgan.evaluation import unet as unet_lib

__all__ = ["SELECTIONS", "DEFAULT_UNET", "DEFAULT_GRID", "LABEL_THRESHOLD", "GRID_KEYS",
           "EvalConfig", "parse_bool", "parse_grid", "grid_configs"]

SELECTIONS = ("real_val", "synthetic_val")
# CPU-sized U-Net training (the paper: base 32, grid, more epochs; flags/sweep_paper.cfg).
# 8 x 30 steps per grid point: with the 2-point default grid, 480 steps in all (the former
# single setting ran 8 x 50 = 400), so the default evaluation stays within minutes on a CPU.
DEFAULT_UNET = unet_lib.UNetConfig(base_filters=16, depth=4, dropout=0.0, learning_rate=3e-4,
                                   batch_size=32, augment=True, epochs=8, steps_per_epoch=30)
# Two learning rates: 3e-4 is the former default; 1e-3 rescued the ε = 3 generator's U-Net
# from the empty-output collapse in benchmarks/evaluation.py.
DEFAULT_GRID = "lr=3e-4,1e-3"
# Synthetic labels are binarised as label >= LABEL_THRESHOLD on the {0, 1} scale. An exported
# generator's label output is already its label channel > 0 on the tanh scale [-1, 1], i.e.
# probability 0.5; TFRecords from other tools may hold soft or 0/255 labels.
LABEL_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    workdir: str                              # training run (generator/, run.json)
    out_dir: Optional[str] = None             # default <workdir>/eval
    data: Optional[str] = None                # the run's TFRecord data set (default: run.json)
    test_data: Optional[str] = None           # imagesTs/labelsTs[/masksTs]; default: the data
                                              # set's own test patients (split "test")
    synthetic: Optional[str] = None           # synthetic TFRecord folder instead of sampling
    num_synthetic: int = 4000
    real_train: Optional[str] = None          # TFRecord folder: extra row on real patches
    threshold_baseline: bool = True          # the bar a synthetic U-Net has to clear
    prior_row: bool = True                    # the run's public prior alone (if it had one)
    selection: str = "synthetic_val"
    synthetic_val_fraction: float = 0.1
    grid: str = DEFAULT_GRID                  # e.g. "lr=1e-4,3e-4;dropout=0,0.1;augment=0,1"
    unet: unet_lib.UNetConfig = DEFAULT_UNET
    label_threshold: float = LABEL_THRESHOLD  # synthetic labels: label >= this is vessel
    overlap: float = 0.5                      # tile overlap on test volumes
    selection_overlap: float = 0.0            # tile overlap on validation volumes (per epoch)
    predict_batch_size: int = 64
    fid: bool = True
    fid_weights: Optional[str] = None         # path or TF-Hub handle (tfdpgan.evaluation.fid)
    fid_samples: int = 1000
    fid_cache_dir: Optional[str] = None       # cache of real-patch activations (keyed)
    seed: int = 0
    # U-Nets trained per row, repeat k with seed + k for sampling, hold-out and U-Net: a
    # patient's DSC and HD95 are the mean over them (one U-Net's DSC moves by ~0.03-0.04 with
    # the seed alone on the demo, as much as the effects measured; issue #11)
    repeats: int = 1

    def repeat(self, k: int) -> "EvalConfig":
        """The settings of repeat ``k`` (0 = these)."""
        return dataclasses.replace(self, seed=self.seed + k,
                                   unet=dataclasses.replace(self.unet, seed=self.unet.seed + k))

    def validate(self):
        """SettingsError (an EvaluationError) naming the flag of the first bad setting."""
        def bad(message):
            raise errors.EvaluationError(message)
        if self.selection not in SELECTIONS:
            bad(f"--selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not 0.0 < self.synthetic_val_fraction < 1.0:
            bad(f"--synthetic_val_fraction must be in (0, 1), got {self.synthetic_val_fraction}")
        if self.repeats < 1:
            bad(f"--repeats must be at least 1, got {self.repeats}")
        if self.num_synthetic < 2 and not self.synthetic:
            bad(f"--num_synthetic must be at least 2, got {self.num_synthetic}")
        if self.fid and self.fid_samples < 2:
            bad(f"--fid_samples must be at least 2, got {self.fid_samples}")
        if not 0.0 < self.label_threshold <= 1.0:
            bad(f"--label_threshold must be in (0, 1], got {self.label_threshold}")
        if self.unet.loss not in unet_lib.LOSSES:
            bad(f"--unet_loss must be one of {unet_lib.LOSSES}, got {self.unet.loss!r}")
        for name in ("overlap", "selection_overlap"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"--{name} must be in [0, 1)")
        grid_configs(self.unet, self.grid)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


GRID_KEYS = {"lr": ("learning_rate", float), "learning_rate": ("learning_rate", float),
             "dropout": ("dropout", float), "augment": ("augment", parse_bool),
             "intensity": ("intensity_augment", parse_bool),
             "base_filters": ("base_filters", int), "batch_size": ("batch_size", int),
             "epochs": ("epochs", int), "steps_per_epoch": ("steps_per_epoch", int)}


def parse_grid(text: str) -> List[dict]:
    """``"lr=1e-4,3e-4;dropout=0,0.1;augment=0,1"`` -> the product as UNetConfig overrides
    ([{}] for an empty grid: the single base setting)."""
    axes = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or key not in GRID_KEYS or not values.strip():
            raise errors.EvaluationError(f"--grid: cannot parse {part.strip()!r}; expected "
                                         f"key=v1,v2 with key in {sorted(GRID_KEYS)}")
        field, kind = GRID_KEYS[key]
        try:
            parsed = [kind(v) for v in values.split(",") if v.strip()]
        except ValueError as e:
            raise errors.EvaluationError(f"--grid: {part.strip()!r}: {e}") from e
        if any(field == f for f, _ in axes):
            raise errors.EvaluationError(f"--grid: {field} given twice")
        axes.append((field, parsed))
    return [dict(zip([f for f, _ in axes], combo))
            for combo in itertools.product(*[v for _, v in axes])]


def grid_configs(base: unet_lib.UNetConfig, text: str) -> List[unet_lib.UNetConfig]:
    return [dataclasses.replace(base, **overrides) for overrides in parse_grid(text)]
