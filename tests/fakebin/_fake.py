"""Shared body of the fake gcloud/ssh/scp/systemctl used by tests/test_deploy.py.

Each fake appends {"prog", "args", "t"} as one JSON line to $FAKE_LOG and runs nothing on any
machine. Copies (scp, gcloud compute scp) land in $FAKE_REMOTE_DIR when it is set, so a test
can read what was shipped. $FAKE_FAIL_MATCH makes a call whose arguments contain that text
exit with $FAKE_FAIL_CODE (default 1); $FAKE_STDOUT is printed by every call (e.g. what
`gcloud secrets versions access` would return).
"""

import json
import os
import shutil
import sys
import time


def record(prog: str, args: list[str]) -> None:
    log = os.environ.get("FAKE_LOG")
    if not log:
        sys.exit(f"fake {prog}: FAKE_LOG is not set (refusing to pretend silently)")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"prog": prog, "args": args, "t": time.time()}) + "\n")


def maybe_fail(args: list[str]) -> None:
    match = os.environ.get("FAKE_FAIL_MATCH")
    if match and any(match in a for a in args):
        sys.exit(int(os.environ.get("FAKE_FAIL_CODE", "1")))


def copy(operands: list[str]) -> None:
    """Copy local sources to the fake remote home: 'host:dest' -> $FAKE_REMOTE_DIR/dest."""
    root = os.environ.get("FAKE_REMOTE_DIR")
    if not root or len(operands) < 2:
        return
    *sources, dest = operands
    _, _, path = dest.partition(":")
    target = os.path.join(root, path)
    for src in sources:
        if path.endswith("/") or os.path.isdir(target) or len(sources) > 1:
            if not os.path.isdir(target):
                sys.exit(f"fake copy: no such remote directory {path!r}")
            shutil.copy(src, os.path.join(target, os.path.basename(src)))
        else:
            shutil.copy(src, target)


def remote_shell(command: str) -> None:
    """The stage set-up the deploy scripts run first: mirror it in the fake remote home."""
    root = os.environ.get("FAKE_REMOTE_DIR")
    if root and command.startswith("rm -rf ") and "mkdir -m 0700 " in command:
        name = command.rsplit(" ", 1)[-1]
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.makedirs(os.path.join(root, name), mode=0o700)


def operands(args: list[str], with_value: tuple[str, ...] = ()) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def main(prog: str) -> None:
    args = sys.argv[1:]
    record(prog, args)
    maybe_fail(args)
    if os.environ.get("FAKE_STDOUT"):
        print(os.environ["FAKE_STDOUT"])
    if prog == "scp":
        copy(operands(args, ("-o", "-i", "-P", "-F", "-c", "-l", "-S", "-J")))
    elif prog == "ssh":
        ops = operands(args, ("-o", "-i", "-p", "-F", "-l", "-J", "-L", "-R", "-D", "-W", "-E", "-c", "-m"))
        if len(ops) >= 2:
            remote_shell(ops[-1])
    elif prog == "gcloud" and args[:2] == ["compute", "scp"]:
        copy(operands(args[2:]))
    elif prog == "gcloud" and args[:2] == ["compute", "ssh"]:
        for a in args:
            if a.startswith("--command="):
                remote_shell(a[len("--command="):])
