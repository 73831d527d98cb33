"""Shared buffers (issue 8): one block of the kernel's memory that every lane opening its name
sees as the same bytes, without a copy, and that lives while any lane holds a view."""

from __future__ import annotations

import textwrap
import time

import pytest

from kernel_helpers import Kernel
from test_lane_memory import mib, rss
from test_lanes import describe, lane, ok

pytestmark = [pytest.mark.parakernel_only("shared buffers are parakernel's own"), pytest.mark.needs_lanes]

ADDRESS = "import ctypes\ndef address(view):\n    return ctypes.addressof(ctypes.c_char.from_buffer(view))\n"


def test_every_lane_sees_the_same_bytes_at_the_same_address(kernel: Kernel):
    make = ADDRESS + textwrap.dedent("""\
        from parakernel import channel, shared_buffer
        grid = shared_buffer("sb-grid", 1 << 20)
        assert not grid.readonly and len(grid) == 1 << 20 and bytes(grid[:4]) == bytes(4)
        grid[:5] = b"hello"
        channel("sb-address").send(address(grid))
        """)
    ok(kernel.execute(lane("sb-a", make)))
    # The other lane writes too; nothing is sent but the address, for the comparison.
    other = ADDRESS + textwrap.dedent("""\
        from parakernel import channel, shared_buffer
        grid = shared_buffer("sb-grid")
        print(bytes(grid[:5]), address(grid) == channel("sb-address").recv())
        grid[5:10] = b"world"
        """)
    assert ok(kernel.execute(lane("sb-b", other))).stdout == "b'hello' True\n"
    main = ADDRESS + textwrap.dedent("""\
        from parakernel import shared_buffer
        grid = shared_buffer("sb-grid", 1 << 20)
        words = grid.cast("B")
        print(bytes(words[:10]), address(grid) > 0)
        """)
    assert ok(kernel.execute(main)).stdout == "b'helloworld' True\n"
    # A cast view of the shared bytes, in a third lane, writes where the others read.
    ok(kernel.execute(lane("sb-c", "from parakernel import shared_buffer\nshared_buffer('sb-grid').cast('Q')[2] = 7")))
    assert ok(kernel.execute("print(grid.cast('Q')[2])")).stdout == "7\n"


def test_size_mistakes_say_what_to_do(kernel: Kernel):
    cell = textwrap.dedent("""\
        from parakernel import shared_buffer
        held = shared_buffer("sb-sized", 100)
        for size in (200, 0, -1):
            try:
                shared_buffer("sb-sized" if size == 200 else f"sb-new{size}", size)
            except ValueError as error:
                print(error)
        try:
            shared_buffer("sb-nobody")
        except KeyError as error:
            print("KeyError", 'shared_buffer("sb-nobody", size)' in str(error))
        """)
    out = ok(kernel.execute(cell)).stdout.splitlines()
    assert "exists with size 100" in out[0] and "size=100" in out[0], out
    assert "at least 1 byte" in out[1] and "positive" in out[2], out
    assert out[3] == "KeyError True", out


def test_a_restarted_maker_does_not_free_what_another_lane_holds_and_the_last_release_does(fresh_kernel: Kernel):
    kernel = fresh_kernel
    size = 64 << 20
    fill = textwrap.dedent(f"""\
        from parakernel import shared_buffer
        big = shared_buffer("sb-big", {size})
        chunk = b"\\x5a" * (1 << 20)
        for start in range(0, len(big), len(chunk)):
            big[start:start + len(chunk)] = chunk
        del chunk
        """)
    ok(kernel.execute(lane("sb-maker", fill)))
    ok(kernel.execute(lane("sb-holder", "from parakernel import shared_buffer\nbig = shared_buffer('sb-big')")))
    ok(kernel.execute("%lane restart sb-maker"))
    # The maker's old interpreter ends beside the new one; then only the holder holds the block.
    holders = "from parakernel import shared_buffers\nprint([b['holders'] for b in shared_buffers()])"
    deadline = time.monotonic() + 30
    while (held := ok(kernel.execute(holders)).stdout) != "[1]\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held == "[1]\n", f"the maker's old interpreter still holds the block: {held}"
    check = "print(big[0], big[len(big) // 2], big[-1], len(big))"
    assert ok(kernel.execute(lane("sb-holder", check))).stdout == f"90 90 90 {size}\n"
    before = rss(kernel)
    ok(kernel.execute(lane("sb-holder", "big.release()")))
    freed = before - rss(kernel)
    assert freed >= size * 3 // 4, f"releasing the last view gave back {mib(freed)} of {mib(size)}"
    gone = ok(kernel.execute("print(shared_buffers())")).stdout
    assert gone == "[]\n", gone
