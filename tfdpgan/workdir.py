"""The workdir of a training run: every file name in it, and the readers of its JSON files.

A workdir holds one run:
  flags.txt        the flags as a flagfile (``--flagfile=W/flags.txt`` repeats or resumes the run)
  run.json         the run's settings and budget plan; a workdir refuses other settings
  privacy.json     the privacy card (machine-readable; keys in ../shared/DESIGN.md)
  PRIVACY.md       the privacy card in plain words
  checkpoints/     networks, optimizers, critic-step ledger and the SECRET sampling seed;
                   ledger.json counts critic steps run but discarded (divergence rollback)
  generator/       the exported generator SavedModel (card in assets.extra/)
  samples.png      a grid of generated pairs
  eval/            tfdpgan.evaluate's report (eval_models/: its selected U-Nets, reused)
  audit/           tfdpgan.audit's measurements (reads private data: keep it private)
plus TensorBoard event files. Only this module spells these names. No TensorFlow import.
"""
import json
import os

from tfdpgan import errors

__all__ = ["FLAGS_TXT", "RUN_JSON", "PRIVACY_JSON", "PRIVACY_MD", "CHECKPOINTS", "GENERATOR",
           "SAMPLES_PNG", "EVAL", "EVAL_MODELS", "AUDIT", "LEDGER_JSON", "ASSETS_EXTRA", "NORMALIZATION_JSON",
           "path", "read_json", "read_run", "read_card", "has_run", "is_finished",
           "generator_card_path"]

FLAGS_TXT = "flags.txt"
RUN_JSON = "run.json"
PRIVACY_JSON = "privacy.json"
PRIVACY_MD = "PRIVACY.md"
CHECKPOINTS = "checkpoints"
LEDGER_JSON = "ledger.json"      # inside checkpoints/: critic steps discarded by a rollback
GENERATOR = "generator"
SAMPLES_PNG = "samples.png"
EVAL = "eval"
EVAL_MODELS = "eval_models"      # selected U-Nets of tfdpgan.evaluate, reused across runs
AUDIT = "audit"
# Inside the generator SavedModel:
ASSETS_EXTRA = "assets.extra"
NORMALIZATION_JSON = "normalization.json"


def path(workdir: str, name: str) -> str:
    """``workdir/name`` for one of the names above."""
    return os.path.join(workdir, name)


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
