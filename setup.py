"""Build rnnfast's C++ (and, on CUDA machines, CUDA) extension.

Knobs (environment variables):
  RNNFAST_CUDA=auto|1|0   build the CUDA kernels: auto = when torch is a CUDA build
                          and nvcc is found; 1 = require it; 0 = CPU only
  TORCH_CUDA_ARCH_LIST    CUDA archs (default: the visible GPUs, else "8.0;9.0")
  DEBUG=1                 -O0 -g
  MAX_JOBS                parallel compile jobs (ninja)
Install into an environment that already has torch:
  pip install --no-build-isolation -e .
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "rnnfast: torch must be installed before building rnnfast, and the build must see it:\n"
        "  pip install torch && pip install --no-build-isolation -e ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    mode = os.environ.get("RNNFAST_CUDA", "auto").lower()
    torch_has_cuda = torch.version.cuda is not None
    if mode in ("0", "off", "false"):
        return False
    if mode in ("1", "on", "true"):
        if not torch_has_cuda or CUDA_HOME is None:
            sys.exit(
                f"rnnfast: RNNFAST_CUDA=1 but torch.version.cuda={torch.version.cuda} "
                f"and CUDA_HOME={CUDA_HOME}; a CUDA build of torch and nvcc are both required"
            )
        return True
    return torch_has_cuda and CUDA_HOME is not None


def main():
    debug = os.environ.get("DEBUG", "0") == "1"
    with_cuda = want_cuda()
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    linux = sys.platform.startswith("linux")

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    if linux:
        cxx.append("-fopenmp")  # at::parallel_for is serial without _OPENMP
    define_macros = [("RNNFAST_PYTHON_MODULE", None)]
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("RNNFAST_WITH_CUDA", None))
        extra["nvcc"] = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
        ext_cls = CUDAExtension

    print("rnnfast build configuration:")
    print(f"  torch               {torch.__version__} (cuda {torch.version.cuda})")
    print(f"  with_cuda           {with_cuda}")
    print(f"  TORCH_CUDA_ARCH_LIST {os.environ.get('TORCH_CUDA_ARCH_LIST', '')}")
    print(f"  debug               {debug}")
    print(f"  openmp              {linux}")

    with open(os.path.join(ROOT, "rnnfast", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py; describes the build of rnnfast._C.\n")
        f.write(f"torch_version = {torch.__version__.split('+')[0]!r}\n")
        f.write(f"torch_full_version = {torch.__version__!r}\n")
        f.write(f"cuda_version = {torch.version.cuda if with_cuda else None!r}\n")
        f.write(f"with_cuda = {with_cuda!r}\n")
        f.write(f"arch_list = {os.environ.get('TORCH_CUDA_ARCH_LIST') if with_cuda else None!r}\n")
        f.write(f"with_openmp = {linux!r}\n")
        f.write(f"debug = {debug!r}\n")

    ext = ext_cls(
        "rnnfast._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] if linux else [],
    )
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})


main()
