"""What every command shares: flag binding, the flags.txt of a run, and the error exit.

Commands (``python -m tfdpgan.<name>``, console scripts ``tfdpgan-<name>``) are the only
modules that define or read absl flags; they build a plain config and call a library.
"""
import sys
from typing import Callable, Iterable

from absl import app, flags

from tfdpgan import errors

__all__ = ["FlagDefiner", "run", "flags_text", "fail"]


class FlagDefiner:
    """``flags.DEFINE_*`` bound to one FlagValues, so tests can parse flagfiles in isolation
    and one command (the sweep) can reuse another's flag definitions on a scratch set."""

    def __init__(self, fv: flags.FlagValues):
        self.fv = fv

    def __getattr__(self, name):
        define = getattr(flags, name)
        return lambda *args, **kwargs: define(*args, flag_values=self.fv, **kwargs)


def flags_text(fv: flags.FlagValues, exclude: Iterable[str] = ()) -> str:
    """The command's own flags (those defined through FlagDefiner, which absl files under
    this module) that have a value, one per line, as a flagfile."""
    exclude = set(exclude)
    return "".join(f.serialize() + "\n" for f in fv.get_key_flags_for_module(__name__)
                   if f.value is not None and f.name not in exclude)


def fail(message: str, code: int = 2):
    """Print ``error: message`` to stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run(main: Callable, define_flags: Callable = None):
    """Define the flags and run ``main`` as an absl app. A TfdpganError (bad input, settings
    or workdir) becomes one line ``error: ...`` and exit status 2; any other exception is a
    bug and keeps its traceback."""
    if define_flags is not None:
        define_flags()

    def guarded(argv):
        try:
            return main(argv)
        except errors.TfdpganError as e:
            fail(str(e), e.exit_code)

    app.run(guarded)
