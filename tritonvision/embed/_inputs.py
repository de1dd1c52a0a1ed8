"""A job's inputs: folders, globs, files, URLs and lists of them, expanded once.

:func:`expand_inputs` expands, deterministically, in the order given:

- a folder: every file below it with an image extension (:data:`IMAGE_EXTENSIONS`, any
  case), recursively, sorted by path; hidden files and folders (``.name``) are skipped
  and symlinked folders are not followed;
- a glob (``'photos/**/*.jpg'``, quoted so the shell leaves it alone; ``**`` recurses):
  the sorted matches; matched folders are expanded as above, matched files count only
  if they have an image extension;
- a file named explicitly is taken as it is, whatever its extension;
- an ``http(s)://`` URL;
- ``@list.txt`` or ``--from-file list.txt`` (``-`` reads stdin): one URL or path per
  line, in file order; blank lines and lines starting with ``#`` are skipped; a folder
  line is expanded; relative paths are relative to the working directory. A listed path
  that does not exist becomes a failed item (in the manifest), not a usage error.

A named path, folder or glob that matches nothing is a usage error. Every input gets a
**key**: the URL as written, or the absolute, normalised path (``os.path.abspath``).
Exact repeats of a key are dropped (the first occurrence keeps its place). The key is
what outputs, the manifest and resume use.

:func:`read_texts` is the text job's counterpart (``tritonvision embed --texts FILE``):
one UTF-8 text per line of FILE (``-`` is stdin), in file order; a line's key is the text
itself, so a text index's sources are its texts. Lines are split on ``\n`` only (a
``\r\n`` ending counts as the newline, a leading UTF-8 BOM is dropped) and are kept
exactly otherwise, spaces included; blank (empty or all-whitespace) lines are skipped;
exact repeats are dropped (first wins). A line that is not valid UTF-8, or holds a NUL
character (which cannot be stored as a key; a sign of a binary file), does not stop the
job: it becomes an item with a ``problem`` naming its line number, reported as a failed
input.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ._errors import UsageError

__all__ = ["IMAGE_EXTENSIONS", "InputItem", "expand_inputs", "read_texts"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
"""Extensions (lower case) picked up from folders and globs."""

# The client's own rule for "this string is a URL" (scheme of 2+ characters).
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class InputItem:
    """One input: its key (URL as written, absolute path, or the text) and its kind.

    ``is_text`` marks a text (``--texts``): its key is the text, embedded with the text
    model. ``problem``, when set, says why the input cannot be embedded at all (a text
    line that is not UTF-8): the job records it as failed without sending it.
    """

    key: str
    is_url: bool
    is_text: bool = False
    problem: str | None = None

    @property
    def source(self) -> str | Path:
        """What the client is given: a ``Path`` is never mistaken for base64 text."""
        return self.key if self.is_url or self.is_text else Path(self.key)


class _Collector:
    def __init__(self) -> None:
        self.items: list[InputItem] = []
        self._seen: set[str] = set()

    def add_url(self, url: str) -> None:
        self._add(InputItem(url, is_url=True))

    def add_path(self, path: str) -> None:
        self._add(InputItem(os.path.abspath(path), is_url=False))

    def add_text(self, item: InputItem) -> None:
        self._add(item)

    def _add(self, item: InputItem) -> None:
        if item.key not in self._seen:
            self._seen.add(item.key)
            self.items.append(item)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(root: str) -> list[str]:
    def warn(exc: OSError) -> None:
        logger.warning("skipping unreadable folder: %s", exc)

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=warn):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, name)
            for name in filenames
            if not name.startswith(".") and _is_image_name(name)
        )
    # By path components, so a folder's files sort together whatever its name.
    found.sort(key=lambda p: os.path.relpath(p, root).split(os.sep))
    return found


def _add_path_or_folder(collector: _Collector, path: str) -> None:
    if os.path.isdir(path):
        for image in _folder_images(path):
            collector.add_path(image)
    else:
        collector.add_path(path)


def _read_list(collector: _Collector, list_file: str, stdin: IO[str] | None) -> None:
    try:
        if list_file == "-":
            if stdin is None:
                raise UsageError("cannot read the input list from stdin")
            lines = stdin.read().splitlines()
        else:
            path = os.path.expanduser(list_file)
            with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(
            f"cannot read input list {list_file!r}: {exc.strerror or exc}", source=list_file
        ) from exc
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _URL_PREFIX.match(entry):
            collector.add_url(entry)
        else:
            # A missing listed file is the item's failure (manifest), not a usage error.
            _add_path_or_folder(collector, os.path.expanduser(entry))


def _add_argument(collector: _Collector, arg: str, stdin: IO[str] | None) -> None:
    if arg.startswith("@") and len(arg) > 1:
        _read_list(collector, arg[1:], stdin)
        return
    if _URL_PREFIX.match(arg):
        collector.add_url(arg)
        return
    path = os.path.expanduser(arg)
    if os.path.exists(path):
        _add_path_or_folder(collector, path)
        return
    if _GLOB_MAGIC.search(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UsageError(f"no file matches {arg!r}", source=arg)
        for match in matches:
            if os.path.isdir(match):
                _add_path_or_folder(collector, match)
            elif _is_image_name(match):
                collector.add_path(match)
        return
    raise UsageError(f"no such file or folder: {arg!r}", source=arg)


def expand_inputs(
    arguments: Sequence[str],
    list_files: Sequence[str] = (),
    *,
    stdin: IO[str] | None = None,
) -> list[InputItem]:
    """The inputs of a job, in order, without repeats (rules in the module docstring).

    ``arguments`` are the command line's inputs; ``list_files`` (``--from-file``) are
    read after them. Raises :class:`UsageError` for a named input that matches nothing,
    an unreadable list, or when there are no inputs at all.
    """
    collector = _Collector()
    for arg in arguments:
        _add_argument(collector, arg, stdin)
    for list_file in list_files:
        _read_list(collector, list_file, stdin)
    if not collector.items:
        named = ", ".join(repr(a) for a in [*arguments, *list_files]) or "nothing"
        raise UsageError(
            f"no images found in {named} (folders and globs take files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return collector.items


def _text_item(raw: bytes, number: int, name: str) -> InputItem | None:
    """The item for line ``number`` (1-based) of ``name``, or None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The key keeps the bytes (as surrogates), so two different bad lines stay apart.
        key = raw.decode("utf-8", "surrogateescape")
        problem = f"line {number} of {name} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        return InputItem(key, is_url=False, is_text=True, problem=problem)
    if not text.strip():
        return None
    if "\0" in text:
        # NumPy string arrays (the work dir's chunk keys) drop trailing NULs.
        problem = f"line {number} of {name} holds a NUL character (is it a binary file?)"
        return InputItem(text, is_url=False, is_text=True, problem=problem)
    return InputItem(text, is_url=False, is_text=True)


def read_texts(text_file: str, *, stdin: IO[bytes] | None = None) -> list[InputItem]:
    """The texts of ``text_file`` (``-``: ``stdin``), in order, without repeats.

    Rules in the module docstring. Raises :class:`UsageError` if the file cannot be
    read or holds no text at all.
    """
    name = "stdin" if text_file == "-" else repr(text_file)
    try:
        if text_file == "-":
            if stdin is None:
                raise UsageError("cannot read texts from stdin")
            data = stdin.read()
        else:
            with open(os.path.expanduser(text_file), "rb") as f:
                data = f.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read texts from {name}: {exc.strerror or exc}", source=text_file
        ) from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    collector = _Collector()
    for number, line in enumerate(data.split(b"\n"), start=1):
        item = _text_item(line.removesuffix(b"\r"), number, name)
        if item is not None:
            collector.add_text(item)
    if not collector.items:
        raise UsageError(f"no texts in {name}: it holds no non-blank line", source=text_file)
    return collector.items
