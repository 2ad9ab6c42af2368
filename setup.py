"""Build hook for the compiled core (pyproject.toml holds everything else).

``GRAYSCOPE_MYPYC=1`` compiles the modules listed in ``pipeline/native.py``
with mypyc (needs mypy and a C compiler); without it the wheel is plain
Python. ``make native`` runs ``build_ext --inplace`` through this file.
"""

import os
import runpy

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("GRAYSCOPE_MYPYC") == "1":
    from mypyc.build import mypycify

    native = runpy.run_path(os.path.join("pipeline", "native.py"))
    ext_modules = mypycify(native["source_paths"](), opt_level="3", group_name=native["GROUP_NAME"])
    # The hand-written C modules (pipeline/native.py's C_MODULES), one C file each, and
    # the headers they share.
    headers = native["c_header_paths"]()
    ext_modules += [
        Extension(module, [source], depends=headers, extra_compile_args=["-O3"])
        for module, source in zip(native["C_MODULES"], native["c_source_paths"](), strict=True)
    ]

setup(ext_modules=ext_modules)
