"""The bulk-embed application behind ``tritonvision embed``: inputs in, resumable chunks out.

An application on the client library: it uses :class:`tritonvision.client.VisionClient`
like any user. One job, in four steps, each in its own module:

1. :func:`expand_inputs` (``_inputs``): folders, globs, files, URLs and lists of them to
   an ordered, repeat-free list of :class:`InputItem` (each with a key: URL or path);
   or :func:`read_texts`: a file of one text per line (each text its own key), for a
   text index embedded with the text model;
2. :class:`WorkDir` (``_workdir``): ``BASE.parts/``, the locked work dir whose committed
   chunk files are the journal of finished inputs, so an interrupted job resumes;
3. :func:`embed_pending` (``_run``): the inputs not yet in the journal, chunk by chunk,
   through one client; each chunk committed atomically; failures collected;
4. :func:`assemble_outputs` (``_outputs``): ``BASE.npy``, ``BASE.sources.jsonl``,
   ``BASE.parquet`` and ``BASE.errors.jsonl`` in input order, renamed into place together.

When every input has been embedded the work dir is removed (:meth:`WorkDir.discard`);
if some failed it is kept, so a re-run retries only those. Errors: :class:`UsageError`
(bad inputs, options or work dir) and :class:`JobAborted` (Triton gone), both
:class:`~tritonvision.errors.TritonVisionError`.
"""

from __future__ import annotations

from ._errors import JobAborted, UsageError
from ._inputs import IMAGE_EXTENSIONS, InputItem, expand_inputs, read_texts
from ._outputs import Assembled, OutputPaths, assemble_outputs, pyarrow_problem
from ._run import Failure, Progress, RunOutcome, embed_pending
from ._workdir import WorkDir

__all__ = [
    "IMAGE_EXTENSIONS",
    "Assembled",
    "Failure",
    "InputItem",
    "JobAborted",
    "OutputPaths",
    "Progress",
    "RunOutcome",
    "UsageError",
    "WorkDir",
    "assemble_outputs",
    "embed_pending",
    "expand_inputs",
    "pyarrow_problem",
    "read_texts",
]
