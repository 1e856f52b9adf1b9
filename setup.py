"""Build hook for the optional native decoder; all metadata lives in pyproject.toml.

The decoder's C source uses GCC builtins (``__builtin_popcountll``, ``__builtin_ctzll``),
so it is built only by a GCC-compatible compiler (GCC, Clang, MinGW); with another one
(MSVC), or when the compile fails (``optional=True``), the build goes on without it and
hf_px decodes `bitmask` checkpoints with numpy (same bits, slower; logged once).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildNativeDecoder(build_ext):
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            self.warn(
                "skipping the native bitmask decoder (it needs GCC or Clang); hf-px decodes with numpy"
            )
            self.extensions = []
            return
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3"]
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildNativeDecoder},
    ext_modules=[
        Extension(
            "hf_px.checkpoint._bitmask_ext",
            ["hf_px/checkpoint/_bitmask_ext.c"],
            optional=True,
        )
    ],
)
