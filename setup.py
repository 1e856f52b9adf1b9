"""Build hook for the optional native decoder; all metadata lives in pyproject.toml.

`optional=True`: without a C compiler the build goes on without the extension and
hf_px decodes `bitmask` checkpoints with numpy (same bits, slower).
"""

import sys

from setuptools import Extension, setup

compile_args = [] if sys.platform == "win32" else ["-O3"]

setup(
    ext_modules=[
        Extension(
            "hf_px.checkpoint._bitmask_ext",
            ["hf_px/checkpoint/_bitmask_ext.c"],
            extra_compile_args=compile_args,
            optional=True,
        )
    ]
)
