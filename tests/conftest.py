"""Test-session settings shared by every test file.

Under `pytest -n 2` each worker gets one BLAS and one Numba thread: two workers with two
threads each oversubscribe a 2-core machine, and OpenBLAS's spinning threads then cost many
times the CPU time of the work. The limits must be set before NumPy loads, hence here.
"""
import os

if "PYTEST_XDIST_WORKER" in os.environ:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
os.environ.setdefault("MPLBACKEND", "Agg")
