"""``tritonvision search``: the sources nearest a sentence or an image in an embed output.

The search is :mod:`tritonvision.search` (numpy, exact cosine); this module is its command
line: it opens the index first (a missing or inconsistent index fails before any request),
embeds the one query on the server with :class:`~tritonvision.client.VisionClient`
(``embed_text`` through ``NAME_texts``, ``embed_image`` through the image side), and prints
the hits: a table, or with ``--json`` a JSON list and nothing else on stdout.

Exit codes (:mod:`._common`): 0 hits printed (an empty index prints none); 2 bad usage or
input (index files missing or disagreeing, the query's dimension not the index's, an
unreadable image), or Triton / the model cannot be used; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tritonvision.contract import DEFAULT_MODEL

from ._common import (
    EXIT_OK,
    SubParsers,
    add_header_argument,
    add_server_argument,
    merge_headers,
    positive_int,
    usage_error,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from tritonvision.client import ClientConfig
    from tritonvision.search import SearchHit

__all__ = ["register", "run_search"]

DEFAULT_K = 10
_COMMAND = "search"

_DESCRIPTION = """\
Find the sources nearest a sentence (--text) or an image (--image) in the output of
`tritonvision embed` (INDEX is BASE or BASE.npy, with BASE.sources.jsonl beside it): the
query is embedded on the server with the model that made the index, then every row is
ranked by cosine similarity; the top k are printed with their scores."""

_EPILOG = """\
models:
  --model NAME is the name given to `tritonvision export --name` (default %(model)s).
  Images go to NAME's image side; texts to NAME_texts (export with --text; another
  text model with --text-model). The query must come from the model that made the index.

scale:
  the search is exact (numpy, every row scored), fine up to a few million rows. The
  index is memory-mapped, not loaded: it takes N x D x 4 bytes on disk (1M x 512 =
  2.0 GB, 5M x 768 = 15 GB) and is scanned in chunks of 64 MiB of RAM; each search
  reads the whole file (from the page cache when it fits in RAM). Beyond a few million rows,
  or for many queries a second, build a vector index instead: FAISS (IndexIVFFlat /
  IndexIVFPQ, IndexHNSWFlat), or a vector database (Milvus, Qdrant, Weaviate, pgvector).

exit status: 0 hits printed, 2 bad usage or input (missing or inconsistent index,
dimension mismatch) or server unreachable, 130 interrupted.

environment: TRITONVISION_* client settings apply; TRITONVISION_HEADERS holds headers
for Triton, one 'Name: value' per line."""


def register(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add ``search`` to the ``tritonvision`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "search",
        help="the sources nearest a text or an image in an embed output (exact cosine)",
        description=_DESCRIPTION,
        epilog=_EPILOG % {"model": DEFAULT_MODEL},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "index", metavar="INDEX", help="BASE or BASE.npy written by `tritonvision embed -o`"
    )
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", metavar="TEXT", help="query by a sentence (the text tower)")
    query.add_argument("--image", metavar="PATH", help="query by an image file")
    parser.add_argument(
        "-k",
        "--top-k",
        dest="k",
        type=positive_int,
        default=DEFAULT_K,
        metavar="K",
        help="how many hits to print (default %(default)s; fewer if the index is smaller)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print a JSON list of {"rank", "score", "row", "source"} (nothing else on stdout)',
    )
    add_server_argument(parser)
    add_header_argument(parser)
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"the exported model's name (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        metavar="NAME",
        help="the served model that embeds texts (default NAME_texts)",
    )
    parser.set_defaults(func=run_search)
    return parser


def _error(message: str) -> int:
    return usage_error(_COMMAND, message)


def run_search(args: argparse.Namespace) -> int:
    """The ``search`` handler; returns the exit code (see the module docstring)."""
    from tritonvision.client import ClientConfig
    from tritonvision.errors import InvalidInput
    from tritonvision.search import EmbeddingIndex

    model: str = args.model or DEFAULT_MODEL
    try:
        index = EmbeddingIndex.open(args.index)
        config = ClientConfig.from_env()
        if args.headers:
            config = config.replace(headers=merge_headers(config.headers, args.headers))
    except InvalidInput as exc:
        return _error(str(exc))
    query = _embed_query(args, model, config)
    if isinstance(query, str):
        return _error(query)
    try:
        hits = index.search(query, args.k)
    except (InvalidInput, OSError) as exc:  # OSError: the files changed under the search
        return _error(str(exc))
    if args.json:
        # ASCII JSON: a source with undecodable bytes (a lone surrogate) stays exact.
        print(json.dumps([_hit_json(h) for h in hits]))
    else:
        _print_table(hits, str(index.paths.npy))
    sys.stdout.flush()
    return EXIT_OK


def _embed_query(
    args: argparse.Namespace, model: str, config: ClientConfig
) -> npt.NDArray[np.float32] | str:
    """The query's embedding, or why it could not be made (naming the query and the model)."""
    import numpy as np

    from tritonvision.client import VisionClient
    from tritonvision.errors import TritonVisionError

    with VisionClient(args.server, model, config=config, text_model=args.text_model) as client:
        try:
            if args.text is not None:
                vector = client.embed_text(args.text).result()
            else:
                vector = client.embed_image(args.image).result()
        except TritonVisionError as exc:
            if args.text is not None:
                what, served = "the query text", client.text_model
            else:
                what, served = f"the query image {args.image}", model
            return f"cannot embed {what} with model {served!r} at {args.server}: {exc}"
    return np.asarray(vector, dtype=np.float32)


def _hit_json(hit: SearchHit) -> dict[str, object]:
    return {"rank": hit.rank, "score": round(hit.score, 6), "row": hit.row, "source": hit.source}


def _print_table(hits: Sequence[SearchHit], index_name: str) -> None:
    if not hits:
        print(f"no hits: {index_name} has no usable rows")
        return
    width = max(4, len(str(hits[-1].rank)))
    print(f"{'rank':>{width}}  {'score':>7}  source")
    for hit in hits:
        print(f"{hit.rank:>{width}}  {hit.score:>7.4f}  {_printable(hit.source)}")


def _printable(text: str) -> str:
    # A file name with undecodable bytes holds lone surrogates, which stdout cannot encode.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
