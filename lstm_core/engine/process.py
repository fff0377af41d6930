"""The process-wide settings the Numba engine runs under, taken and restored in one place.

* One BLAS thread: the matmuls are small and the batch slices already fill the cores.
* glibc keeps freed memory: by default it would mmap and return the few MB a train step frees per
  slice, faulting the pages in again on every step.
* No cyclic GC: a full collection walks every TensorFlow/Keras object; the loop makes no cycles.
"""

import contextlib
import ctypes
import gc
from collections.abc import Iterator

# mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}
TRAINING_VALUES = {M_TRIM_THRESHOLD: 256 << 20, M_MMAP_THRESHOLD: 32 << 20}


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where there is no glibc."""
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
