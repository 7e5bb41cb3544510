"""
How every command line ends when something goes wrong (train.py, eval.py, gemma.py, rlhf.py, convert and fetch,
data.py fetch, toy_moons.py, bench.py): never with a traceback on the terminal.

- Bad input, a missing file, a diverged run (OSError, ValueError, FloatingPointError, raised with a sentence that
  names the file, row or flag): that sentence, exit status 1.
- Out of memory: one sentence saying so and what to lower.
- Ctrl-C where no loop handles it (train.py's loop saves and says how to continue): "interrupted", status 130.
- Anything else is a bug: one line naming the log file where its traceback, the command and the versions are
  written for a bug report (RUN/error.log when the command has a run folder, else a file in the temporary folder).
"""
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import traceback

EXPECTED = (OSError, ValueError, FloatingPointError)
RUN = None  # the folder of the run in progress, set by the command as soon as it knows it: its error.log


def one_line(e, limit=2000):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def out_of_memory(e):
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and any(s in text for s in ("can't allocate memory", "out of memory",
                                                               "not enough memory")))


def bug_report(command, e):
    """Writes the traceback of e, the command line and the versions to a log file; returns its path (or None)."""
    torch = getattr(sys.modules.get("torch"), "__version__", "not imported")
    text = (f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {command}: "
            f"{' '.join(sys.argv)}\ncwd {os.getcwd()}; python {platform.python_version()}, torch {torch}, "
            f"{platform.platform()}\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)) + "\n")
    places = [os.path.join(RUN, "error.log")] if RUN and os.path.isdir(RUN) else []
    places.append(os.path.join(tempfile.gettempdir(), f"dial-{command}-{os.getpid()}.log"))
    for path in places:
        try:
            with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


@contextlib.contextmanager
def last_resort(command):
    """The body of a command line: every exception ends in one line on stderr and a non-zero exit (see above)."""
    try:
        yield
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except EXPECTED as e:
        sys.exit(f"error: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 (the last resort: whatever it is, one line and a log for the bug report)
        if out_of_memory(e):
            sys.exit(f"error: out of memory ({one_line(e, 200)}); lower the batch sizes, --max-len or the LoRA rank, "
                     "or use a machine with more memory")
        log = bug_report(command, e)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        sys.exit(f"error: unexpected {type(e).__name__} ({one_line(e, 200)}): a bug; {where}, for a bug report")
