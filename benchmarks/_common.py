"""What every benchmark records beside its rows: the machine, the versions and the command."""
from __future__ import annotations

import json
import os
import platform
import sys

import torch


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_info() -> dict:
    """The CPU model (lscpu's 'Model name') and its vector-instruction flags that matter for
    these timings (Linux; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = [x for x in SIMD_FLAGS if x in value.split()]
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_flags": flags}


def write_results(path: str, rows: list, device: torch.device = torch.device("cpu"), **extra) -> None:
    """Write {"meta", "rows"} JSON to ``path``; meta names the machine (CPU model and vector
    flags), threads, versions, command."""
    try:
        import numba
        numba_threads = numba.get_num_threads()
    except ImportError:
        numba_threads = None
    meta = {"machine": platform.processor() or platform.machine(), **cpu_info(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "numba_threads": numba_threads,
            "torch": torch.__version__, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "command": " ".join(sys.argv), **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"written {path}")
