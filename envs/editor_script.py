"""The `str_replace_editor` tool, run inside the sandbox as `python3 -c <this file>`.

Its arguments arrive as JSON on stdin (file contents can be large and hold any byte,
so they never travel as argv). Paths are relative to the repository, or absolute;
the container, not this script, decides what may be touched.
Standard library only: it runs on whatever python3 the image has. Importing it runs
nothing: `str_replace` is what the host uses to know an edit's report in advance.
"""

import json
import os
import sys

ROOT = "/workspace/repo"
MAX_LISTING = 200


def fail(msg):
    print("error: " + msg)
    sys.exit(1)


def numbered(text, start=1):
    return "\n".join("%6d\t%s" % (i, line) for i, line in enumerate(text.split("\n"), start))


def str_replace(text, old, new, path):
    """(the text with `old`, which occurs once, replaced by `new`; the report: the edited lines and
    three around them). Pure, so a reference trajectory can say what the tool will print."""
    edited = text.replace(old, new, 1)
    first = text[: text.index(old)].count("\n") + 1
    lines = edited.split("\n")[max(first - 4, 0) : first + new.count("\n") + 3]
    return edited, "edited %s:\n%s" % (path, numbered("\n".join(lines), max(first - 3, 1)))


def view(path, args):
    if os.path.isdir(path):
        entries = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            depth = os.path.relpath(dirpath, path).count(os.sep)
            if depth >= 2:
                dirnames[:] = []
            for name in sorted(filenames):
                entries.append(os.path.relpath(os.path.join(dirpath, name), path))
        more = "\n... (%d more)" % (len(entries) - MAX_LISTING) if len(entries) > MAX_LISTING else ""
        print("\n".join(entries[:MAX_LISTING]) + more)
        return
    text = read(path)
    rng = args.get("view_range")
    if rng:
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng)):
            fail("view_range must be [start, end] (1-based, end -1 for the last line)")
        lines = text.split("\n")
        start, end = rng[0], (len(lines) if rng[1] == -1 else rng[1])
        if not 1 <= start <= max(end, 1) <= len(lines):
            fail("view_range %r is outside the file's %d lines" % (rng, len(lines)))
        print(numbered("\n".join(lines[start - 1 : end]), start))
    else:
        print(numbered(text))


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        fail("cannot read %s: %s" % (path, e.strerror))


def write(path, text):
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        fail("cannot write %s: %s" % (path, e.strerror))


def need(args, key):
    if not isinstance(args.get(key), str):
        fail("'%s' (a string) is required for %s" % (key, args.get("command")))
    return args[key]


def main():
    args = json.load(sys.stdin)
    command, path = args.get("command"), args.get("path")
    if not isinstance(path, str) or not path:
        fail("'path' is required")
    path = os.path.normpath(os.path.join(ROOT, path))
    if command == "view":
        view(path, args)
    elif command == "create":
        if os.path.exists(path):
            fail("%s already exists: use str_replace to change it" % path)
        write(path, need(args, "file_text"))
        print("created %s" % path)
    elif command == "str_replace":
        old, new = need(args, "old_str"), args.get("new_str", "")
        text = read(path)
        count = text.count(old)
        if count != 1:
            fail("old_str occurs %d times in %s; it must occur exactly once" % (count, path))
        edited, report = str_replace(text, old, new, path)
        write(path, edited)
        print(report)
    elif command == "insert":
        line, new = args.get("insert_line"), need(args, "new_str")
        lines = read(path).split("\n")
        if not isinstance(line, int) or not 0 <= line <= len(lines):
            fail("insert_line must be an integer from 0 to %d" % len(lines))
        write(path, "\n".join(lines[:line] + new.split("\n") + lines[line:]))
        print("inserted %d line(s) after line %d of %s" % (new.count("\n") + 1, line, path))
    else:
        fail("unknown command %r: use view, create, str_replace or insert" % (command,))


if __name__ == "__main__":  # `python3 -c` runs it as __main__; an import only defines
    main()
