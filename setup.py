"""Build of the tracer's optional C accelerator (everything else is declared in pyproject.toml).

The extension is optional: without a C compiler or Python headers the install still succeeds and the tracer runs
on its pure-Python backends (``opencwm.trace.tracer.native_available()`` says which is in use)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("opencwm.trace._native", ["opencwm/trace/_native.c"], optional=True,
                             extra_compile_args=["-O2"])])
