"""The examples in sxtlab's docstrings run and show what they say.

A test of its own rather than ``--doctest-modules``, which would also collect the two
``conftest.py`` files of ``tests/`` and ``notebooks/`` as one module and fail.
"""

import doctest
import importlib
import io
import pkgutil

import pytest

import sxtlab

MODULES = sorted(m.name for m in pkgutil.walk_packages(sxtlab.__path__, "sxtlab."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()


def test_examples_are_found():
    # a module list that came back empty would make the test above pass by doing nothing
    assert {"sxtlab.phantom", "sxtlab.volume", "sxtlab.io"} <= set(MODULES)
