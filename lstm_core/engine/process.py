"""The process-wide settings the Numba engine runs under, taken and restored in one place.

* One BLAS thread: the kernels' matmuls are small and the batch slices already run side by
  side on the cores, so BLAS's own threads would only compete with them.
* glibc keeps freed memory: a train step allocates and frees a few MB per slice, which glibc's
  defaults would mmap and return each time, faulting the pages in again on every step.
* No cyclic garbage collection: a full collection walks every TensorFlow/Keras object in the
  process, and the loop makes no reference cycles.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}
TRAINING_VALUES = {M_TRIM_THRESHOLD: 256 << 20, M_MMAP_THRESHOLD: 32 << 20}


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where there is no glibc."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(param, value))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def engine_settings() -> Iterator[None]:
    """One BLAS thread, glibc keeping freed memory and no cyclic GC inside; restored after."""
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS: loaded before limiting it)
    from threadpoolctl import threadpool_limits

    gc_was_enabled = gc.isenabled()
    malloc_set = [p for p, value in TRAINING_VALUES.items() if mallopt(p, value)]
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            gc.disable()
            yield
    finally:
        if gc_was_enabled:
            gc.enable()
        for param in malloc_set:
            mallopt(param, GLIBC_DEFAULTS[param])
