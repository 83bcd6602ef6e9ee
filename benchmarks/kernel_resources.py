"""Registers, spills and stack of every CUDA kernel, as ptxas reports them, for sm_80/90/100.

NVRTC compiles each registered .cu file of kernels/cuda/ with the backend's options and
-Xptxas=-v; no GPU is needed (only CuPy and the NVRTC wheel). A kernel that spills, or that uses
many registers, runs fewer threads per SM: read this beside bench_conv's GPU timings.

    python benchmarks/kernel_resources.py [--arch 90]
"""
from __future__ import annotations

import argparse
import re

from minigen.kernels import cuda

CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def resources(filename: str, architecture: str) -> list[dict]:
    from cupy.cuda import nvrtc
    names = cuda._name_expressions(filename)
    program = nvrtc.createProgram(cuda._source(filename), filename, (), ())
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        nvrtc.compileProgram(program, (*cuda.COMPILE_OPTIONS, *CUPY_OPTIONS,
                                       f"-arch=sm_{architecture}", "-Xptxas=-v"))
        lowered = {nvrtc.getLoweredName(program, name): name for name in names}
        log = nvrtc.getProgramLog(program)
    finally:
        nvrtc.destroyProgram(program)
    rows, current = [], None
    for line in log.splitlines():
        if (entry := _ENTRY.search(line)):
            current = {"kernel": lowered.get(entry.group(1), entry.group(1)), "arch": entry.group(2)}
            rows.append(current)
        elif current is not None and (frame := _FRAME.search(line)):
            current.update(stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                           spill_loads=int(frame.group(3)))
        elif current is not None and (registers := _REGISTERS.search(line)):
            current["registers"] = int(registers.group(1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="sm_ number (default: 80, 90, 100)")
    args = parser.parse_args()
    print(f"{'kernel':36} {'arch':>5} {'registers':>9} {'stack':>6} {'spill st':>9} {'spill ld':>9}")
    for architecture in args.arch or ["80", "90", "100"]:
        for filename in sorted(cuda._KERNELS):
            for row in resources(filename, architecture):
                print(f"{row['kernel']:36} {'sm_' + row['arch']:>5} {row.get('registers', '?'):>9} "
                      f"{row.get('stack', '?'):>6} {row.get('spill_stores', '?'):>9} "
                      f"{row.get('spill_loads', '?'):>9}")


if __name__ == "__main__":
    main()
