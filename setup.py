"""Build hook for the compiled core (pyproject.toml holds everything else).

``GRAYSCOPE_MYPYC=1`` compiles the modules listed in ``pipeline/native.py``
with mypyc (needs mypy and a C compiler); without it the wheel is plain
Python. ``make native`` runs ``build_ext --inplace`` through this file.
"""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("GRAYSCOPE_MYPYC") == "1":
    from mypyc.build import mypycify

    native = runpy.run_path(os.path.join("pipeline", "native.py"))
    ext_modules = mypycify(native["source_paths"](), opt_level="3", group_name=native["GROUP_NAME"])

setup(ext_modules=ext_modules)
