"""Put on PYTHONPATH by tests/reliability/test_security.py: every Python process of the run cycle
(the CLI, the daemon, the code server, run workers, dpe's own launch helper) appends each process
it starts to the file named by DPE_TEST_PROCESS_LOG, as Python's audit events report it."""

import json
import os
import sys

_LOG = os.environ.get("DPE_TEST_PROCESS_LOG")
_EVENTS = {"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"}


def _argv(event, args):
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        argv = args[1]
        return [str(a) for a in argv] if isinstance(argv, (list, tuple)) else [str(argv)]
    if event == "os.system":  # (command,)
        return [str(args[0])]
    if event == "os.spawn":  # (mode, path, args, env)
        return [str(a) for a in args[2]]
    return [str(a) for a in args[1]]  # os.exec, os.posix_spawn: (path, args, env)


def _hook(event, args):
    if event not in _EVENTS:
        return
    try:
        line = json.dumps({"pid": os.getpid(), "event": event, "argv": _argv(event, args)})
    except Exception as error:  # noqa: BLE001 - a record of what could not be read is still a record
        line = json.dumps({"pid": os.getpid(), "event": event, "argv": [], "unreadable": repr(error)})
    with open(_LOG, "a") as log:
        log.write(line + "\n")


if _LOG:
    sys.addaudithook(_hook)
