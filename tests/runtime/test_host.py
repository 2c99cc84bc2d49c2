"""Host-process settings: glibc keeps freed memory so XLA's step temporaries stay mapped."""

import subprocess
import sys
import textwrap

import pytest

# mallinfo2().hblks counts live mmap-backed blocks and .arena the heap's mapped bytes. After
# keep_freed_memory a large block must come from the heap, and the heap must keep it once freed,
# even past the 2 GiB that a finite trim threshold could express (one d1024 step's temporaries),
# or every train step would page-fault its temporaries back in. release_freed_memory gives it back.
_PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys
    from scalelab.runtime.host import keep_freed_memory, release_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = int(sys.argv[2]) << 20  # untouched, so only address space: no memory is committed
    applied = sys.argv[1] == "1" and keep_freed_memory()
    mapped_before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblks - mapped_before
    libc.free(block)
    kept = libc.mallinfo2().arena >= size
    release_freed_memory()
    print(applied, mapped, kept, libc.mallinfo2().arena < size)
    """
)


def _probe(apply: bool, mib: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if apply else "0", str(mib)], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("mib", [64, 3 << 10])
def test_large_blocks_come_from_a_heap_that_keeps_them_until_released(mib):
    # glibc's default: mmap, unmapped on free, so nothing is left to release.
    assert _probe(apply=False, mib=mib) == ["False", "1", "False", "True"]
    assert _probe(apply=True, mib=mib) == ["True", "0", "True", "True"]
