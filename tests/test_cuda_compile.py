"""Every .cu file under kernels/cuda/ compiles for real GPUs (sm_80, sm_90, sm_100) by the route
that runs it on one: NVRTC through CuPy, with the backend's options and name expressions plus
the options CuPy's RawModule adds, warnings as errors; and every name expression has a lowered
(mangled) name in the binary. Needs CuPy and the NVRTC library, not a GPU: CuPy's own compile
helpers ask the current device for its architecture, so NVRTC is called directly here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

ARCHITECTURES = ("80", "90", "100")
KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cuda"
SOURCES = sorted(path.name for path in KERNELS_DIR.glob("*.cu"))
# What cupy.RawModule adds to the options it is given (cupy/cuda/compiler.py: -ftz=true in
# _compile_with_cache_cuda, the architecture and --device-as-default-execution-space in
# _compile_using_nvrtc); -Werror=all-warnings makes every warning fail the build here.
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
WARNINGS_AS_ERRORS = ("-Werror=all-warnings",)


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # ImportError, or the NVRTC library is missing
        pytest.skip(f"CuPy's NVRTC cannot be loaded ({str(error).splitlines()[0]}); pip install "
                    f"cupy-cuda13x nvidia-cuda-nvrtc")
    return nvrtc


def compile_for(filename: str, architecture: str) -> dict:
    """Compile one .cu file for sm_<architecture>; name expression -> lowered name."""
    from minigen.kernels import cuda
    nvrtc = _nvrtc()
    names = cuda._name_expressions(filename)
    program = nvrtc.createProgram(cuda._source(filename), filename, (), ())
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        options = (*cuda.COMPILE_OPTIONS, *CUPY_OPTIONS, f"-arch=sm_{architecture}",
                   *WARNINGS_AS_ERRORS)
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            pytest.fail(f"{filename} for sm_{architecture}: {error}\n"
                        f"{nvrtc.getProgramLog(program)}")
        log = nvrtc.getProgramLog(program).strip()
        assert not log, f"{filename} for sm_{architecture} left a compiler log:\n{log}"
        assert len(nvrtc.getCUBIN(program)) > 0
        return {name: nvrtc.getLoweredName(program, name) for name in names}
    finally:
        nvrtc.destroyProgram(program)


def test_every_cu_file_is_registered():
    from minigen.kernels import cuda
    assert SOURCES, f"no .cu files in {KERNELS_DIR}"
    unregistered = sorted(set(SOURCES) - set(cuda._KERNELS))
    missing = sorted(set(cuda._KERNELS) - set(SOURCES))
    assert not unregistered, f"add these .cu files to kernels/cuda _KERNELS: {unregistered}"
    assert not missing, f"_KERNELS names files that do not exist: {missing}"


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda arch: f"sm_{arch}")
@pytest.mark.parametrize("filename", SOURCES)
def test_cu_file_compiles_with_nvrtc_without_warnings(filename, architecture):
    lowered = compile_for(filename, architecture)
    for name, mangled in lowered.items():
        kernel = name.split("<")[0]
        # Itanium mangling: _Z <length><name> I <template arguments> E ...
        assert mangled.startswith(f"_Z{len(kernel)}{kernel}I"), (name, mangled)
    assert len(set(lowered.values())) == len(lowered), "two name expressions share a kernel"


def test_a_warning_fails_the_compile_check(monkeypatch):
    from minigen.kernels import cuda
    source = cuda._source(SOURCES[0])
    monkeypatch.setattr(cuda, "_source", lambda filename: source + (
        "\n__device__ int unused_variable() { int never_read; return 0; }\n"))
    with pytest.raises(pytest.fail.Exception, match="declared but never referenced"):
        compile_for(SOURCES[0], ARCHITECTURES[0])
