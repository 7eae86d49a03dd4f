"""Fault injection for workflow tests, loaded by every Python process of a test's Snakemake run through
``PYTHONPATH`` (``RELIGHTFLOW_FAULT``). A test double on purpose: a CUDA out-of-memory error cannot happen
on a CPU-only machine, so the segmenter raises the exact exception torch raises when it happens.

* ``segment-oom:<marker>`` — the first segmentation raises ``torch.cuda.OutOfMemoryError`` and creates
  ``<marker>``; later ones (the rerun) work.
* ``slow-degrade:<seconds>`` — each degraded image takes ``<seconds>`` longer (a window to kill the job in).
* ``slow-ingest:<seconds>`` — each probed image takes ``<seconds>`` longer (a run that lasts a while).
"""

import os

_FAULT = os.environ.get("RELIGHTFLOW_FAULT", "")

if _FAULT.startswith("segment-oom:"):
    from relightflow.pairs import segment as _segment

    _marker = _FAULT.split(":", 1)[1]
    _original = _segment.ClassicalSegmenter.segment

    def _oom_once(self, image):
        if not os.path.exists(_marker):
            open(_marker, "w").close()
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return _original(self, image)

    _segment.ClassicalSegmenter.segment = _oom_once

elif _FAULT.startswith("slow-degrade:"):
    import time

    from relightflow.pairs import run as _run

    _delay = float(_FAULT.split(":", 1)[1])
    _pair_image = _run.pair_image

    def _slow(*args, **kwargs):
        time.sleep(_delay)
        return _pair_image(*args, **kwargs)

    _run.pair_image = _slow

elif _FAULT.startswith("slow-ingest:"):
    import time

    from relightflow import ingest as _ingest

    _delay = float(_FAULT.split(":", 1)[1])
    _probe = _ingest.probe_image

    def _slow_probe(*args, **kwargs):
        time.sleep(_delay)
        return _probe(*args, **kwargs)

    _ingest.probe_image = _slow_probe
