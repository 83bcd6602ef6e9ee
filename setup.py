"""minigen: a from-scratch generative-modelling engine (GANs and DDPM) on NumPy / CuPy."""
from setuptools import find_packages, setup

setup(
    name="minigen",
    version="0.1.0",
    description="A readable generative-modelling engine: autograd, conv kernels, GAN and DDPM loops",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["minigen", "minigen.*"]) + ["minigen.kernels", "minigen.kernels.cuda"],
    # kernels/ sits at the top of the repository but installs as minigen.kernels, so no
    # generic top-level `kernels` package lands in site-packages.
    package_dir={"minigen.kernels": "kernels", "minigen.kernels.cuda": "kernels/cuda"},
    package_data={"minigen.kernels.cuda": ["*.cu"]},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "scipy>=1.10",
        "h5py>=3.8",
        "scikit-learn>=1.2",  # ships the embedded 8x8 digits; nothing is downloaded
        "pillow>=9.0",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",  # holds BLAS to one thread while conv chunks run in parallel
    ],
    extras_require={
        # CuPy with its CUDA libraries (NVRTC compiles the kernels, cuBLAS runs every GEMM):
        # the [ctk] extra brings them as wheels. `cuda` for a CUDA 12 driver, `cuda13` for 13.
        "cuda": ["cupy-cuda12x[ctk]>=14"],
        "cuda13": ["cupy-cuda13x[ctk]>=14"],
        # data-parallel training, `mpiexec -n N minigen train ...`: MPI's Python binding and an
        # MPI from the package index (the mpich wheel brings mpiexec); NCCL comes with CuPy
        "dist": ["mpi4py>=4", "mpich>=4"],
        # diffusers: the samplers' step-by-step oracle
        "dev": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "torch==2.13.0",
                "diffusers>=0.30"],
    },
    entry_points={"console_scripts": ["minigen=minigen.cli:main"]},
)
