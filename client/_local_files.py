"""Which local files a path source may read: ``allow_local_files`` and ``local_files_root``.

``embed()`` and ``batch_embed_images()`` read a plain string that is not a URL, data URI
or base64 image as a file path. A service that passes its users' strings through would
let them read (and probe for) any image file the service can read, so:

- ``allow_local_files=False`` refuses every path with :class:`InvalidInput` **before any
  file system call**: the answer is the same whether the path exists, is a FIFO, a
  directory or an image, so it cannot be used to probe;
- ``local_files_root=DIR`` admits only paths that resolve inside ``DIR`` once symlinks
  and ``..`` are resolved (``os.path.realpath``); relative paths are taken relative to
  ``DIR``. The file read is the resolved path. The check and the read are two steps:
  whoever can create symlinks inside ``DIR`` while the client reads could race them, so
  the root is for strings from users, not for directories they can write to.
"""

from __future__ import annotations

import os

from tritonvision.errors import InvalidInput, describe_source

__all__ = ["LocalFilePolicy"]


class LocalFilePolicy:
    """The path policy of one client (``ClientConfig.allow_local_files`` / ``local_files_root``)."""

    def __init__(self, *, allow: bool, root: str | os.PathLike[str] | None) -> None:
        self.allow = allow
        self.root = None if root is None else os.fspath(root)
        self._real_root: str | None = None

    @property
    def touches_files(self) -> bool:
        """Whether :meth:`resolve` makes file system calls (run it off the event loop)."""
        return self.allow and self.root is not None

    def refuse_early(self, source: str | os.PathLike[str]) -> None:
        """Raise if paths are off; pure (no file system call), so it runs on the loop."""
        if not self.allow:
            raise InvalidInput(
                f"{describe_source(source)}: reading local files is turned off "
                "(ClientConfig.allow_local_files=False); pass a URL, base64, bytes or an image",
                source=source,
            )

    def resolve(self, source: str | os.PathLike[str]) -> str:
        """The path to read for ``source``, or :class:`InvalidInput` if the policy refuses it.

        Blocking when a root is set (it resolves symlinks): run it in an executor.
        """
        self.refuse_early(source)
        path = os.fspath(source)
        if self.root is None:
            return path
        try:
            if self._real_root is None:
                self._real_root = os.path.realpath(self.root)
            real = os.path.realpath(os.path.join(self._real_root, path))
        except (ValueError, OSError) as exc:  # NUL bytes, symlink loops on some platforms
            raise InvalidInput(f"{describe_source(source)}: unusable path ({exc})") from exc
        root = self._real_root
        if real != root and os.path.commonpath([root, real]) != root:
            # The root is not named: the message may reach the user who sent the path.
            raise InvalidInput(
                f"{describe_source(source)}: outside the directory local files may be read "
                "from (ClientConfig.local_files_root)",
                source=source,
            )
        return real
