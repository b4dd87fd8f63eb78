"""`load_tool(name)`: a script of `tools/` imported as a module (tools are
scripts, not a package; they import their siblings by path)."""

import importlib.util
import os
import sys

TOOLS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "tools"
)


def load_tool(name):
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(TOOLS, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
