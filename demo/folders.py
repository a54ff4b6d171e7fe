"""Folders of the demo process's own (archives, pictures, trained heads): each made on first use, removed at exit."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path


class PrivateFolder:
    """A temporary folder made once, on the first call (thread-safe), and removed when the process exits."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._path: Path | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix=self.prefix))
                atexit.register(shutil.rmtree, self._path, ignore_errors=True)
            return self._path
