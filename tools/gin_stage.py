#!/usr/bin/env python
"""What one stage's gin file takes, for `tools/run_experiment.sh`.

  gin_stage.py take GIN_FILE -- BINDING...     bindings the stage takes
  gin_stage.py unused GIN_FILE... -- BINDING...  bindings no stage takes
  gin_stage.py task GIN_FILE                   its task (gin/tasks/<task>.gin)
  gin_stage.py start_from GIN_FILE             its `start_from` directive

A stage is configured by a gin file and the files it includes (its
closure). It takes a binding `NAME=value` (a macro) if the closure sets or
refers to `NAME` (`NAME = ...`, `%NAME`), and a binding
`module.Configurable.argument=value` if the closure imports `module` (`from
... import module`, as gin's dynamic registration requires) or names
`module.Configurable`. Binding a configurable that a stage does not import
fails in gin (`export` takes no `task.Task...`), and a macro it never reads
is refused by `bertkd`'s typo check, so each stage gets only its own.
Output: one item per line. Standard library only.

`start_from` reads a line `# run_experiment.sh: start_from = MODEL_DIR` of
the gin file itself: the stage continues from the newest checkpoint of
WORK_DIR/MODEL_DIR (the WMT14 student continues the baseline).
"""

import os
import re
import sys

_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)
_FROM_IMPORT = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+(.+)$", re.MULTILINE)
_IMPORT = re.compile(r"^\s*import\s+([\w.]+)(?:\s+as\s+(\w+))?", re.MULTILINE)
_TASK = re.compile(r"(?:^|/)gin/tasks/(\w+)\.gin$")
_START_FROM = re.compile(
    r"^#\s*run_experiment\.sh:\s*start_from\s*=\s*(\w+)\s*$", re.MULTILINE
)


def _strip_comments(text):
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _resolve(include, including_file, root):
    if os.path.isabs(include):
        return include
    for base in (root, os.path.dirname(including_file)):
        candidate = os.path.join(base, include)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"{including_file} includes {include!r}, which is neither under "
        f"{root} nor next to it."
    )


def closure(gin_file, root=None):
    """`[(path, text without comments)]` of `gin_file` and its includes."""
    root = root or os.getcwd()
    seen, order, pending = set(), [], [os.path.abspath(gin_file)]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as f:
            text = _strip_comments(f.read())
        order.append((path, text))
        for include in _INCLUDE.findall(text):
            pending.append(os.path.abspath(_resolve(include, path, root)))
    return order


def _imported_names(text):
    names = set()
    for module, imported in _FROM_IMPORT.findall(text):
        if module == "__gin__":
            continue
        for item in imported.strip("() ").split(","):
            parts = item.split()
            if not parts:
                continue
            alias = parts[-1] if len(parts) == 3 and parts[1] == "as" else None
            names.add(alias or parts[0])
            names.add(f"{module}.{parts[0]}")
    for module, alias in _IMPORT.findall(text):
        names.add(alias or module.split(".")[0])
        names.add(module)
    return names


def _name(binding):
    """The bound name of `binding` (`NAME` or `scope/a.b.arg`), scope off."""
    left = binding.split("=", 1)[0].strip()
    return left.rsplit("/", 1)[-1]


def takes(texts, binding):
    """Whether a stage whose closure is `texts` takes `binding`."""
    if "=" not in binding:
        return True  # Not a binding (e.g. an include): leave it to gin.
    name = _name(binding)
    text = "\n".join(texts)
    if "." not in name:  # A macro.
        used = rf"%{re.escape(name)}\b"
        defined = rf"^\s*{re.escape(name)}\s*="
        return bool(
            re.search(used, text) or re.search(defined, text, re.MULTILINE)
        )
    selector = name.rsplit(".", 1)[0]
    imported = _imported_names(text)
    parts = selector.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) in imported:
            return True
    return bool(re.search(rf"(?<![\w.]){re.escape(selector)}\b", text))


def _texts(gin_file):
    return [text for _, text in closure(gin_file)]


def task_of(gin_file):
    """The task a stage reads: `<task>` of the `gin/tasks/<task>.gin` its
    closure includes, or None."""
    for path, _ in closure(gin_file):
        match = _TASK.search(path.replace(os.sep, "/"))
        if match:
            return match.group(1)
    return None


def start_from(gin_file):
    """The `start_from` directive of `gin_file` itself, or None."""
    with open(gin_file, encoding="utf-8") as f:
        match = _START_FROM.search(f.read())
    return match.group(1) if match else None


def _split(arguments):
    if "--" not in arguments:
        return arguments, []
    at = arguments.index("--")
    return arguments[:at], arguments[at + 1 :]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, arguments = argv[1], argv[2:]
    files, bindings = _split(arguments)
    if command == "take" and len(files) == 1:
        texts = _texts(files[0])
        for binding in bindings:
            if takes(texts, binding):
                print(binding)
        return 0
    if command == "unused" and files:
        closures = [_texts(path) for path in files]
        for binding in bindings:
            if not any(takes(texts, binding) for texts in closures):
                print(binding)
        return 0
    if command == "task" and len(files) == 1:
        print(task_of(files[0]) or "")
        return 0
    if command == "start_from" and len(files) == 1:
        print(start_from(files[0]) or "")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
