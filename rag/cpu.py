"""What this machine's CPU can do, read from ``/proc/cpuinfo`` (no torch import): its model name and flags."""

from __future__ import annotations

import platform
import re
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flag -> the name of the widest vector units it shows, widest first
_UNITS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    line = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return frozenset(line.group(1).split()) if line else frozenset()


def has_bf16_units(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware: AMX tiles or AVX-512 BF16 among ``flags`` (default:
    this CPU's)."""
    return bool({"amx_tile", "avx512_bf16"} & (cpu_flags() if flags is None else flags))


def cpu_description() -> str:
    """The machine, its CPU's model and widest vector units, e.g. ``x86_64 (AMD EPYC, AVX2)``."""
    model = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    flags = cpu_flags()
    units = next((name for flag, name in _UNITS if flag in flags), None)
    parts = [part for part in (model.group(1).strip() if model else None, units) if part]
    return f"{platform.machine()} ({', '.join(parts)})" if parts else platform.machine()
