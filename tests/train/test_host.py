"""Host-process settings: glibc keeps freed memory so XLA's step temporaries stay mapped."""

import subprocess
import sys
import textwrap

import pytest

# mallinfo2().hblks counts live mmap-backed blocks; after keep_freed_memory a large block must come
# from the heap instead, or every train step would page-fault its temporaries back in.
_PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys
    from train.host import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    applied = sys.argv[1] == "1" and keep_freed_memory()
    mapped_before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks - mapped_before
    libc.free(block)
    arena_after_free = libc.mallinfo2().arena
    print(applied, mapped, arena_after_free >= 64 << 20)
    """
)


def _probe(apply: bool) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if apply else "0"], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_large_blocks_come_from_a_heap_that_is_not_trimmed():
    assert _probe(apply=False) == ["False", "1", "False"]  # glibc's default: mmap, unmapped on free
    assert _probe(apply=True) == ["True", "0", "True"]
