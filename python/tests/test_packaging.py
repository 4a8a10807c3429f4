"""The installed native module is the `dist` build: no debug info, at most 4 MiB (it was 12.4 MB with it).

Read from the ELF section headers of the file Python imported, so a build that lost `profile = "dist"`
(pyproject.toml) or the profile's `strip` (workspace Cargo.toml) fails here, not in a user's disk usage.
"""

import struct
from pathlib import Path
from typing import List, Tuple

from port_sharding import _port_sharding

LIMIT = 4 * 1024 * 1024


def section_names(path: Path) -> List[str]:
    """The section names of a 64-bit little-endian ELF file (what Linux x86-64 and aarch64 build)."""
    data = path.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", f"{path} is not a 64-bit little-endian ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> Tuple[int, int, int]:
        name, = struct.unpack_from("<I", data, shoff + index * shentsize)
        offset, size = struct.unpack_from("<QQ", data, shoff + index * shentsize + 0x18)
        return name, offset, size

    _, strtab, strsize = header(shstrndx)
    names = data[strtab : strtab + strsize]
    return [names[n : names.index(b"\0", n)].decode() for n, _, _ in (header(i) for i in range(shnum))]


def extension() -> Path:
    path = _port_sharding.__file__
    assert path is not None
    return Path(path)


def test_the_installed_module_carries_no_debug_info() -> None:
    names = section_names(extension())
    assert ".text" in names, names  # the reader found the real section table
    debug = [n for n in names if n.startswith((".debug_", ".zdebug_"))]
    assert not debug, f"{extension()} was built with debug info ({', '.join(debug)}): not the `dist` profile"


def test_the_installed_module_is_at_most_4_mib() -> None:
    size = extension().stat().st_size
    assert size <= LIMIT, f"{extension()} is {size} bytes, over the {LIMIT}-byte (4 MiB) limit"
