"""Make an op's module callable, so `transmamba.ops.ssd(...)` calls the function of the same name.

`transmamba.ops.ssd` is both a module (holding `ssd_naive`, `ssd_chunked`, ...) and, by mamba_ssm
convention, the name users call. Giving the module a `__call__` keeps both working:
`from transmamba.ops.ssd import ssd_chunked` and `transmamba.ops.ssd(x, dt, A, B, C)`.
"""

from __future__ import annotations

import sys
import types


def make_module_callable(module_name: str, function_name: str) -> None:
    """Let calling module `module_name` call its attribute `function_name`."""
    module = sys.modules[module_name]

    class _CallableOpModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    module.__class__ = _CallableOpModule
