"""Two model slots and an atomically replaced pointer: a crash leaves the old or the new model.

``models/slot-a`` and ``models/slot-b`` hold verified bundle directories; ``models/active``
is a small JSON file naming the active slot. A new bundle is unpacked into ``models/staging``
and checked there (signature, hashes, compatibility, golden vectors); only a bundle that passed
replaces the *inactive* slot (``install``), so a refused bundle never costs the previous model
its rollback copy. Then the slot is fsynced, and a write-to-temp, fsync, ``os.replace``,
fsync-directory sequence flips the pointer. ``rename(2)`` is atomic, so after a crash the
pointer names either the old slot (untouched) or the new one (complete on disk).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from edgefleet.protocol.manifest import MANIFEST_FILE

SLOTS = ("a", "b")
POINTER = "active"
STAGING = "staging"
Hook = Callable[[str], None]


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (and ``path`` itself)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or new entry in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Slots:
    """The model slots under ``root`` (``data_dir/models``)."""

    def __init__(self, root: Path, hook: Hook | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Test and simulator seam: called at each step so a crash can be injected there.
        self._hook = hook or (lambda _stage: None)

    def path(self, slot: str) -> Path:
        """Directory of ``slot``."""
        return self.root / f"slot-{slot}"

    def active(self) -> str | None:
        """The active slot's name, or None when no model was ever installed."""
        try:
            data = json.loads((self.root / POINTER).read_text())
        except (OSError, ValueError):
            return None
        slot = data.get("slot") if isinstance(data, dict) else None
        return slot if slot in SLOTS else None

    def active_path(self) -> Path | None:
        """Directory of the active bundle."""
        slot = self.active()
        return None if slot is None else self.path(slot)

    def inactive(self) -> str:
        """The slot a new bundle goes into."""
        return "b" if self.active() == "a" else "a"

    def previous(self) -> str | None:
        """The inactive slot if it still holds a bundle (what a rollback returns to)."""
        slot = self.inactive()
        return slot if (self.path(slot) / MANIFEST_FILE).is_file() else None

    def staging(self) -> Path:
        """The scratch directory a bundle is unpacked into and checked in."""
        return self.root / STAGING

    def prepare(self) -> Path:
        """Empty the staging directory and return it, ready to receive a bundle.

        The slots are not touched: until :meth:`install`, the inactive slot still holds the
        previous model (the rollback copy).
        """
        path = self.staging()
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self._hook("prepared")
        return path

    def install(self, staged: Path, slot: str | None = None) -> str:
        """Move a checked bundle directory into ``slot`` (default: the inactive one); not active.

        Replaces what the slot held. Never the active slot: a crash here must leave the serving
        model intact, and the worst it does is leave the inactive slot empty.
        """
        slot = self.inactive() if slot is None else slot
        if slot not in SLOTS:
            raise ValueError(f"no slot {slot!r}")
        if slot == self.active():
            raise ValueError(f"slot {slot} is active: a new bundle goes into the inactive one")
        path = self.path(slot)
        if path.exists():
            shutil.rmtree(path)
        self._hook("cleared")
        # Same file system (both under root): a rename, not a copy.
        os.replace(staged, path)
        fsync_dir(self.root)
        self._hook("installed")
        return slot

    def activate(self, slot: str, ref: str = "") -> None:
        """Make ``slot`` active: fsync its files, then atomically replace the pointer."""
        if slot not in SLOTS:
            raise ValueError(f"no slot {slot!r}")
        fsync_tree(self.path(slot))
        self._hook("synced")
        tmp = self.root / (POINTER + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"slot": slot, "ref": ref}, f)
            f.flush()
            os.fsync(f.fileno())
        self._hook("pointer-written")
        os.replace(tmp, self.root / POINTER)
        self._hook("pointer-replaced")
        fsync_dir(self.root)
        self._hook("done")

    def rollback(self) -> str | None:
        """Point back at the previous slot, if it holds a bundle; returns the slot activated."""
        prev = self.previous()
        if prev is not None:
            self.activate(prev, "rollback")
        return prev
