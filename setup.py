"""The compiled pricing kernel; everything else about the distribution is in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

kernel = Extension(
    "engine_ext._kernel",
    ["engine_ext/_kernel.pyx"],
    # No FMA contraction or fast-math: the kernel must round exactly like the Python twin.
    extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"],
)

setup(ext_modules=cythonize([kernel], compiler_directives={"language_level": "3"}))
