"""The GPU tests on a CPU through Triton's interpreter (``TRITON_INTERPRET=1``): Triton 3.6's interpreter hands a
kernel's scalar arguments over as numpy arrays, which numpy 2 refuses in ``range()`` ("only 0-dimensional arrays can
be converted to Python scalars"), so under the interpreter these tests need numpy < 2 first on the path, e.g.
``pip install --target /tmp/np1 "numpy<2"`` then ``TRITON_INTERPRET=1 PYTHONPATH=/tmp/np1:. pytest tests/gpu/...``.
Said once here instead of as a failure deep inside a kernel."""
import os

import numpy
import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") == "1" and int(numpy.__version__.split(".")[0]) >= 2:
        skip = pytest.mark.skip(reason=f"Triton's interpreter needs numpy < 2 here (numpy {numpy.__version__}): "
                                       "see tests/gpu/conftest.py")
        for item in items:
            if "tests/gpu/" in str(item.fspath):
                item.add_marker(skip)
