"""Build and install Trade-Up Engine: the compiled pricing kernel plus the Python packages."""
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

kernel = Extension(
    "engine_ext._kernel",
    ["engine_ext/_kernel.pyx"],
    # No FMA contraction or fast-math: the kernel must round exactly like the Python twin.
    extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"],
)

setup(
    name="tradeup-engine",
    version="0.1.0",
    description="gRPC trade-up offer pricing service",
    python_requires=">=3.11",
    packages=find_packages(include=["engine_ext", "server", "server.*", "client", "protos", "protos.*"]),
    package_data={"server": ["*.sql"]},
    ext_modules=cythonize([kernel], compiler_directives={"language_level": "3"}),
    install_requires=[
        "grpcio==1.85.1",
        "grpcio-health-checking==1.85.1",
        "grpcio-reflection==1.85.1",
        "protobuf>=6.31,<8",
        "pymysql==1.2.4",
        "DBUtils==3.2.0",
        "cachetools==8.0.0",
        "redis==8.1.0",
    ],
    extras_require={"test": ["pytest", "hypothesis", "grpcio-tools==1.85.1", "PyYAML"]},
    entry_points={"console_scripts": ["tradeup=client.cli:main", "tradeup-server=server.__main__:main"]},
)
