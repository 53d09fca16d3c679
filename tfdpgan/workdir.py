"""The workdir of a training run: every file name in it, where it lives, and the readers of its
JSON files.

A workdir holds one run, split by what the differential-privacy guarantee covers:

  release/             what may leave the hospital: exactly what the guarantee covers
    generator/         the exported generator SavedModel (generator variables only), with
                       assets.extra/privacy.json (the card) and assets.extra/normalization.json
                       (the normalisation's method and formula; no per-patient parameters)
    privacy.json       the privacy card (machine-readable; keys in ../shared/DESIGN.md)
    PRIVACY.md         the privacy card in plain words
    samples.png        a grid of generated pairs
    tensorboard/       TensorBoard events of DP-safe quantities only (tfdpgan.gan.training)
  private/             everything else; never share it
    flags.txt          the flags as a flagfile (``--flagfile=W/private/flags.txt`` repeats or
                       resumes the run); holds --tf_seed and data paths
    run.json           the run's settings, budget plan, data path and data fingerprint
    checkpoints/       networks (the critic too), optimizers, critic-step ledger and the
                       SECRET sampling seed; ledger.json counts critic steps run but discarded
    tensorboard_private/  with --log_private_stats: quantities computed from real data
                       outside the DP mechanism (critic loss, Wasserstein estimate,
                       gradient-norm quantiles, clipped fraction, realised batch size)
    eval/, eval_*/     tfdpgan.evaluate's reports (they read real test data);
    eval_models/       its selected U-Nets (trained on synthetic or real data), reused
    audit/             tfdpgan.audit's measurements (reads training patches and the critic)

Both folders (and everything in them) are owner-only: 0700 folders, 0600 files
(``owner_only`` while writing, ``secure`` afterwards). ``release/`` is owner-only too: sharing
it is a deliberate act (``python -m tfdpgan.export --release=DIR``), not a side effect.

Old flat workdirs (tfdpgan before the split: run.json, checkpoints/, generator/, ... directly
in the workdir) are still READ in place: ``path`` resolves every name to its flat location when
the workdir has neither ``release/`` nor ``private/`` but a flat ``run.json``, ``privacy.json``
or ``checkpoints/``. So evaluate, export, audit, privacy and sample keep working on them (their
outputs go where they always went). Training refuses to resume one, and ``--release`` copies
only the release names of it (its TensorBoard events mixed private statistics in and stay).

Only this module spells these names. No TensorFlow import.
"""
import contextlib
import json
import os

from tfdpgan import errors

__all__ = ["FLAGS_TXT", "RUN_JSON", "PRIVACY_JSON", "PRIVACY_MD", "CHECKPOINTS", "GENERATOR",
           "SAMPLES_PNG", "EVAL", "EVAL_MODELS", "AUDIT", "LEDGER_JSON", "ASSETS_EXTRA",
           "NORMALIZATION_JSON", "RELEASE", "PRIVATE", "TENSORBOARD", "TENSORBOARD_PRIVATE",
           "RELEASE_NAMES", "PRIVATE_NAMES",
           "path", "private_path", "is_flat", "ledger_path", "release_dir", "private_dir",
           "make_dirs", "owner_only", "secure", "release_entries", "read_json", "read_run",
           "read_card", "has_run", "is_finished", "generator_card_path"]

RELEASE = "release"
PRIVATE = "private"

# release/
GENERATOR = "generator"
PRIVACY_JSON = "privacy.json"
PRIVACY_MD = "PRIVACY.md"
SAMPLES_PNG = "samples.png"
TENSORBOARD = "tensorboard"                  # DP-safe scalars, samples, plan, statement
# private/
FLAGS_TXT = "flags.txt"
RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"
LEDGER_JSON = "ledger.json"      # inside checkpoints/: critic steps discarded by a rollback
TENSORBOARD_PRIVATE = "tensorboard_private"  # --log_private_stats only
EVAL = "eval"
EVAL_MODELS = "eval_models"      # selected U-Nets of tfdpgan.evaluate, reused across runs
AUDIT = "audit"
# Inside the generator SavedModel:
ASSETS_EXTRA = "assets.extra"
NORMALIZATION_JSON = "normalization.json"

RELEASE_NAMES = (GENERATOR, PRIVACY_JSON, PRIVACY_MD, SAMPLES_PNG, TENSORBOARD)
PRIVATE_NAMES = (FLAGS_TXT, RUN_JSON, CHECKPOINTS, TENSORBOARD_PRIVATE, EVAL, EVAL_MODELS,
                 AUDIT)
# What an old flat workdir may release (its event files mixed in private statistics).
_FLAT_RELEASE = (GENERATOR, PRIVACY_JSON, PRIVACY_MD, SAMPLES_PNG)
_FLAT_MARKERS = (RUN_JSON, PRIVACY_JSON, CHECKPOINTS)
_DIR_MODE, _FILE_MODE = 0o700, 0o600


def is_flat(workdir: str) -> bool:
    """True for a workdir of tfdpgan before the release/private split (read in place)."""
    return (not os.path.isdir(os.path.join(workdir, RELEASE))
            and not os.path.isdir(os.path.join(workdir, PRIVATE))
            and any(os.path.exists(os.path.join(workdir, n)) for n in _FLAT_MARKERS))


def release_dir(workdir: str) -> str:
    return os.path.join(workdir, RELEASE)


def private_dir(workdir: str) -> str:
    return os.path.join(workdir, PRIVATE)


def path(workdir: str, name: str) -> str:
    """Where ``name`` (one of the names above) lives: ``workdir/release/name`` or
    ``workdir/private/name`` (``workdir/name`` in an old flat workdir). ValueError for any
    other name (use ``private_path`` for an ad-hoc private output)."""
    if name in RELEASE_NAMES:
        folder = RELEASE
    elif name in PRIVATE_NAMES:
        folder = PRIVATE
    else:
        raise ValueError(f"{name!r} is not a workdir name (tfdpgan.workdir)")
    return os.path.join(workdir, name) if is_flat(workdir) else \
        os.path.join(workdir, folder, name)


def private_path(workdir: str, name: str) -> str:
    """``workdir/private/name`` for an output not listed above (e.g. ``eval_<test set>``);
    ``workdir/name`` in an old flat workdir."""
    if os.path.isabs(name) or os.pardir in name.split(os.sep):
        raise ValueError(f"{name!r}: a private output must stay inside the workdir")
    return os.path.join(workdir, name) if is_flat(workdir) else \
        os.path.join(workdir, PRIVATE, name)


def ledger_path(workdir: str) -> str:
    """checkpoints/ledger.json: critic steps run but discarded (spent privacy)."""
    return os.path.join(path(workdir, CHECKPOINTS), LEDGER_JSON)


def make_dirs(workdir: str):
    """Create ``workdir/release`` and ``workdir/private`` owner-only (0700), whatever the
    umask. WorkdirError for an old flat workdir (training does not mix the two layouts)."""
    if is_flat(workdir):
        raise errors.WorkdirError(
            f"{workdir} holds a run of an older tfdpgan (flat layout: no {RELEASE}/ and "
            f"{PRIVATE}/ folders); it can still be evaluated, exported, audited and sampled, "
            f"but training does not resume it: use a new --workdir")
    for folder in (workdir, release_dir(workdir), private_dir(workdir)):
        os.makedirs(folder, exist_ok=True)
    for folder in (release_dir(workdir), private_dir(workdir)):
        os.chmod(folder, _DIR_MODE)


@contextlib.contextmanager
def owner_only():
    """Within the block, files and folders this process creates are owner-only (umask
    0o077; the previous umask is restored afterwards). The umask is process-wide."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def secure(folder: str):
    """Make ``folder`` and everything under it owner-only: folders 0700, files 0600 (symlinks
    are left alone). Nothing happens if ``folder`` does not exist."""
    if not os.path.isdir(folder):
        return
    os.chmod(folder, _DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), _DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), _FILE_MODE)


def release_entries(workdir: str) -> list:
    """[(name, absolute path)] of what the release holds: every entry of ``release/`` (each
    must be one of RELEASE_NAMES, else WorkdirError: an unknown file is never released), or
    for an old flat workdir the generator, the card and samples.png."""
    if is_flat(workdir):
        return [(n, os.path.join(workdir, n)) for n in _FLAT_RELEASE
                if os.path.exists(os.path.join(workdir, n))]
    folder = release_dir(workdir)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    unknown = [n for n in names if n not in RELEASE_NAMES]
    if unknown:
        raise errors.WorkdirError(
            f"{folder} holds {', '.join(unknown)}, which is not part of the release "
            f"({', '.join(RELEASE_NAMES)}); move it out (e.g. to {private_dir(workdir)}) "
            f"before releasing")
    return [(n, os.path.join(folder, n)) for n in names]


def read_json(file_path: str, what: str) -> dict:
    """A JSON object from ``file_path``; WorkdirError naming the file if missing or broken."""
    try:
        with open(file_path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise errors.WorkdirError(f"{file_path}: not found ({what})") from None
    except (OSError, ValueError) as e:
        raise errors.WorkdirError(f"{file_path}: unreadable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise errors.WorkdirError(f"{file_path}: {what} is not a JSON object")
    return obj


def has_run(workdir: str) -> bool:
    return os.path.isfile(path(workdir, RUN_JSON))


def read_run(workdir: str) -> dict:
    """The run's settings (run.json); WorkdirError if ``workdir`` is not a training workdir."""
    if not os.path.isdir(workdir):
        raise errors.WorkdirError(f"{workdir}: no such folder; is it a training workdir?")
    return read_json(path(workdir, RUN_JSON), "the run's settings; is this a training workdir?")


def read_card(workdir: str) -> dict:
    """The privacy card (privacy.json) of a finished run."""
    return read_json(path(workdir, PRIVACY_JSON), "the privacy card; has the run finished?")


def generator_card_path(generator_dir: str) -> str:
    """Where an exported generator carries its privacy card."""
    return os.path.join(generator_dir, ASSETS_EXTRA, PRIVACY_JSON)


def is_finished(workdir: str) -> bool:
    """True once the run wrote its card and exported its generator (the last two outputs)."""
    return (os.path.isfile(path(workdir, PRIVACY_JSON))
            and os.path.isfile(os.path.join(path(workdir, GENERATOR), "saved_model.pb")))
