"""TensorFlow and Keras imported quietly: their C++ and absl log lines stay off stderr.

On a machine without a GPU, TensorFlow 2.21 prints ``E0000 ... failed call to cuInit`` at its
first operation and a handful of ``I0000`` lines while its shared libraries load, although
nothing is wrong. ``TF_CPP_MIN_LOG_LEVEL=3`` stops the first kind (``2``, the usual advice,
does not: the cuInit line is an error); the load-time lines are written before TensorFlow reads
any setting, so they are filtered out of file descriptor 2 while the import runs. With
``edgefleet --verbose`` (``EDGEFLEET_VERBOSE=1``, inherited by child processes) nothing here
touches TensorFlow's settings or stderr. Every import of TensorFlow or Keras in edgefleet goes
through :func:`import_tensorflow` or :func:`import_keras`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

VERBOSE_ENV = "EDGEFLEET_VERBOSE"
QUIET_LEVEL = "3"

# absl's C++ log prefix (severity, MMDD, time: epoch seconds before absl is set up, thread,
# file:line) and the two notices TensorFlow prints around it at load time. Fatal lines (F) are
# kept: the process is about to die.
_NOISE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+(?:\.\d+)? +\d+ [\w.+-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: )"
)
_import_lock = threading.Lock()


def verbose() -> bool:
    """True when the user asked for third-party log output (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Turn third-party log output on or off for this process and the children it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def import_tensorflow() -> Any:
    """``import tensorflow``, without its log noise unless :func:`verbose`."""
    if verbose():
        import tensorflow as tf

        return tf
    # Set before the import: TensorFlow reads it when its libraries load. Quiet means quiet,
    # so a lower level inherited from elsewhere is raised too; --verbose is the way back.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LEVEL
    with _import_lock:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            with filtered_stderr():
                import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    # Keras and TensorFlow log Python-side warnings through absl's logger.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_keras() -> Any:
    """``import keras`` (TensorFlow backend), without its log noise unless :func:`verbose`."""
    import_tensorflow()
    import keras

    return keras


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """While it runs, drop absl-formatted log lines written to file descriptor 2.

    Everything else is passed on as it arrives, by a thread reading a pipe, so that another
    thread's output (or a child started meanwhile, which inherits the pipe) is not lost.
    """
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(
        target=_forward, args=(read_end, original), name="tf-stderr-filter", daemon=True
    )
    forwarder.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        restored = os.dup(original)
        os.dup2(restored, 2)  # closes the pipe's last write end here: the forwarder sees EOF
        os.close(restored)
        # A child started meanwhile may keep the pipe open; it is forwarded until it exits.
        forwarder.join(1.0)


def _forward(read_end: int, out: int) -> None:
    pending = b""
    try:
        with open(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write(out, b"".join(line + b"\n" for line in lines if not _NOISE.match(line)))
        if pending and not _NOISE.match(pending):
            _write(out, pending)
    finally:
        os.close(out)


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data) :]
        except OSError:  # stderr went away: nothing left to tell
            return
