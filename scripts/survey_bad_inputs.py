#!/usr/bin/env python
"""A re-runnable survey of bad and unusual inputs across physmoe's public entry points.

    cd /work/main && HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python scripts/survey_bad_inputs.py

Every case declares what should happen:

* ``error``: an exception of a type that means "bad input" (ValueError, TypeError, OSError and
  their subclasses such as FileNotFoundError) whose message names the problem (a fragment is
  given per case); for the ``physmoe`` CLI (``physmoe.cli.main([...])`` in this process) a
  return code of 1 or 2, ``error:`` on stderr, the fragment on stderr, and no traceback;
* ``ok``: it works, and a check of the answer passes (the same top-1 as the clean input, the
  wavelength the header states, the expected number of records ...).

and is classified as

* **clear error** -- refused as declared;
* **worked correctly** -- worked and the check passed;
* **silently wrong** -- worked but the check failed, or an input that must be refused worked;
* **raw traceback or misleading message** -- an exception of another type (IndexError,
  KeyError, AttributeError, RuntimeError, MemoryError, ... from deep inside; for the CLI: it
  escaped ``main``), a message that does not name the problem, or a valid input refused;
* **side effect** -- a file or folder the call must not touch changed (sha256 / mtime / listing
  of the protected paths), or work was done (a model trained) before a refusal.

Everything happens in a temporary directory (caches too: HF_HOME, PHYSMOE_CACHE, ... point
into it; the working directory is it); nothing outside it is written except the results
file (``--output``, default ``results/bad_input_survey.md``). Seeded and deterministic: a tiny
model (``tests/tiny_models.py``) trained for a few epochs on 60 embedded structures of 4 space
groups by ``physmoe train`` itself serves the prediction cases.

Options: ``--only WORD`` runs only the groups whose name contains WORD (development),
``--keep`` keeps the temporary directory, ``--output PATH``.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
START = time.perf_counter()

# -- the sandbox: before anything imports transformers / datasets / matplotlib ------------------

TMP = Path(tempfile.mkdtemp(prefix="physmoe-survey-"))
_SANDBOX_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": str(TMP / "cache" / "hf"),
    "HF_DATASETS_CACHE": str(TMP / "cache" / "hf-datasets"),
    "PHYSMOE_CACHE": str(TMP / "cache" / "physmoe"),
    "MPLCONFIGDIR": str(TMP / "cache" / "matplotlib"),
    "XDG_CACHE_HOME": str(TMP / "cache" / "xdg"),
    "TORCHINDUCTOR_CACHE_DIR": str(TMP / "cache" / "inductor"),
    "TRITON_CACHE_DIR": str(TMP / "cache" / "triton"),
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
}
os.environ.update(_SANDBOX_ENV)
for _value in _SANDBOX_ENV.values():
    if _value.startswith(str(TMP)):
        Path(_value).mkdir(parents=True, exist_ok=True)
os.chdir(TMP)  # relative default outputs (trainer_output/, runs/) land in the sandbox
sys.path.insert(0, str(REPO / "tests"))  # tiny_models.py


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now (logging handlers bind their
    stream once; the cases redirect stderr per call)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()

    def isatty(self):
        return False


_DYNAMIC = _CurrentStderr()
_root_handler = logging.StreamHandler(_DYNAMIC)
_root_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.basicConfig(level=logging.WARNING, handlers=[_root_handler])
logging.getLogger("physmoe").setLevel(logging.INFO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402

transformers.utils.logging.disable_default_handler()
transformers.utils.logging.add_handler(logging.StreamHandler(_DYNAMIC))
transformers.utils.logging.set_verbosity_warning()
try:
    import datasets  # noqa: E402

    datasets.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass
torch.manual_seed(0)
torch.set_num_threads(1)

import physmoe  # noqa: E402
from physmoe.cli import main as cli_main  # noqa: E402
from physmoe.data import (  # noqa: E402
    PXRDCollator,
    RandomCrystalGenerator,
    TwoThetaGrid,
    read_cif,
    read_pattern,
    read_reference_npy,
    read_simxrd,
    simulate_peaks,
)

# -- categories ---------------------------------------------------------------------------------

CLEAR = "clear error"
WORKED = "worked correctly"
WRONG = "silently wrong"
RAW = "raw traceback or misleading message"
SIDE = "side effect"
CATEGORIES = (CLEAR, WORKED, WRONG, RAW, SIDE)

#: Exception types that mean "bad input". Anything else (IndexError, KeyError, AttributeError,
#: RuntimeError, MemoryError, EOFError, UnpicklingError, ...) is a raw traceback.
MEANINGFUL = (ValueError, TypeError, OSError, ImportError)


@dataclass
class Outcome:
    entry: str
    name: str
    expected: str
    category: str
    happened: str
    should: str
    seconds: float


RESULTS: list[Outcome] = []
NOT_SURVEYED: list[tuple[str, str]] = []


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _file_state(path: Path):
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return "dir"
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest())


def snapshot(paths) -> dict:
    """State of files / folders (recursively): mtime, size and sha256 of every file."""
    state = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            state[str(path)] = None
            continue
        state[str(path)] = _file_state(path)
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                state[str(item)] = _file_state(item)
    return state


def changes(before: dict, after: dict) -> list[str]:
    found = []
    for key in sorted(set(before) | set(after)):
        if key not in after or (after[key] is None and before.get(key) is not None):
            found.append(f"removed {Path(key).name}")
        elif key not in before or before[key] is None and after[key] is not None:
            found.append(f"created {Path(key).name}")
        elif before[key] != after[key]:
            found.append(f"modified {Path(key).name}")
    return found


class LogCapture(logging.Handler):
    """Collects the log records of one case (physmoe's and transformers')."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


@dataclass
class Context:
    """What a check may look at besides the result."""

    logs: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


def _matches(message: str, fragment) -> bool:
    fragments = (fragment,) if isinstance(fragment, str) else tuple(fragment)
    return any(f.lower() in message.lower() for f in fragments)


def _fragment_text(fragment) -> str:
    if fragment is None:
        return "the problem"
    fragments = (fragment,) if isinstance(fragment, str) else tuple(fragment)
    return " or ".join(repr(f) for f in fragments)


def _record(entry, name, expected, category, happened, should, seconds):
    outcome = Outcome(entry, name, expected, category, _short(happened, 400), should, seconds)
    RESULTS.append(outcome)
    marker = {CLEAR: ".", WORKED: ".", WRONG: "W", RAW: "R", SIDE: "S"}[category]
    print(
        f"[{marker}] {entry}: {name} -> {category} ({seconds:.1f} s)",
        file=sys.__stdout__,
        flush=True,
    )
    if category not in (CLEAR, WORKED) or os.environ.get("SURVEY_VERBOSE"):
        print(f"      {_short(happened, 300)}", file=sys.__stdout__, flush=True)


def _changed_text(changed: list[str]) -> str:
    """The first six changes of protected paths (and how many more)."""
    return "; ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")


def _record_check(entry, name, expected_text, problem, worked, should, seconds):
    """Record a finished ``ok`` case by its check's ``problem``: None is ``worked``; a problem
    prefixed ``"misleading: "`` a misleading message; any other a wrong answer."""
    if problem is None:
        _record(entry, name, expected_text, WORKED, worked, should, seconds)
    elif str(problem).startswith("misleading: "):
        _record(
            entry, name, expected_text, RAW, str(problem)[len("misleading: ") :], should, seconds
        )
    else:
        _record(entry, name, expected_text, WRONG, str(problem), should, seconds)


def _record_exception(
    entry, name, expected_text, should, seconds, *, expect, fragment, error, refused
):
    """Record a case that raised: ``error`` is (message, its text alone, whether its type means
    bad input (MEANINGFUL), where it was raised); ``refused`` what to say if the input was valid."""
    message, text, meaningful, where = error
    if not meaningful:
        _record(entry, name, expected_text, RAW, f"{message} (raised in {where})", should, seconds)
    elif expect == "ok":
        _record(entry, name, expected_text, RAW, refused, should, seconds)
    elif fragment is None or _matches(text, fragment):
        _record(entry, name, expected_text, CLEAR, message, should, seconds)
    else:
        _record(
            entry,
            name,
            expected_text,
            RAW,
            f"message does not name the problem: {message} (in {where})",
            should,
            seconds,
        )


def run_case(
    entry: str,
    name: str,
    fn,
    *,
    expect: str,
    fragment=None,
    check=None,
    protect=(),
    should: str | None = None,
    after=None,
) -> None:
    """Run one library case ``fn()`` and classify it (see the module docstring).

    ``check(result, ctx)`` for ``ok`` cases returns None when the answer is right, else what is
    wrong (prefixed ``"misleading: "`` for a misleading message rather than a wrong answer).
    ``after()`` returns a description of work or files it should not have left, or None.
    """
    assert expect in ("ok", "error", "either")
    should = should or (
        f"a clear error naming {_fragment_text(fragment)}"
        if expect == "error"
        else f"works, or a clear error naming {_fragment_text(fragment)}"
        if expect == "either"
        else "works"
    )
    before = snapshot(protect)
    out, err = io.StringIO(), io.StringIO()
    result = error = None
    start = time.perf_counter()
    with LogCapture() as logs, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = fn()
        except KeyboardInterrupt:
            raise
        except BaseException as caught:  # noqa: BLE001 - the survey classifies everything
            error = caught
    seconds = time.perf_counter() - start
    ctx = Context(logs.text, out.getvalue(), err.getvalue(), seconds)
    changed = changes(before, snapshot(protect))
    late = after() if after is not None else None
    expected_text = {
        "ok": "ok",
        "error": f"error {_fragment_text(fragment)}",
        "either": f"ok or error {_fragment_text(fragment)}",
    }[expect]
    if changed or late:
        outcome = f"{type(error).__name__}: {error}" if error is not None else "returned"
        happened = f"{late or _changed_text(changed)}; then {outcome}"
        _record(entry, name, expected_text, SIDE, happened, should, seconds)
        return
    if error is None:
        if expect == "error":
            _record(
                entry,
                name,
                expected_text,
                WRONG,
                f"no error: returned {_describe(result)}",
                should,
                seconds,
            )
            return
        problem = check(result, ctx) if check is not None else None
        worked = f"returned {_describe(result)}"
        _record_check(entry, name, expected_text, problem, worked, should, seconds)
        return
    where = _raise_site(error)
    message = f"{type(error).__name__}: {error}"
    _record_exception(
        entry,
        name,
        expected_text,
        should,
        seconds,
        expect=expect,
        fragment=fragment,
        error=(message, str(error), isinstance(error, MEANINGFUL), where),
        refused=f"valid input refused: {message} (in {where})",
    )


def case_of(entry: str, call, protect=None):
    """The ``case(name, value, expect, fragment, check, should, **kwargs)`` of a group whose cases
    run ``call(value, **kwargs)``, with the paths ``protect(value)`` protected."""

    def case(name, value, expect, fragment=None, check=None, should=None, **kwargs):
        run_case(
            entry,
            name,
            lambda: call(value, **kwargs),
            expect=expect,
            fragment=fragment,
            check=check,
            protect=protect(value) if protect is not None else (),
            should=should,
        )

    return case


def _raise_site(error: BaseException) -> str:
    """``file:function`` of the innermost frame that raised ``error``."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    frame = last.tb_frame
    filename = frame.f_code.co_filename
    for marker in ("/src/physmoe/", "/site-packages/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{frame.f_code.co_name}:{last.tb_lineno}"


def _describe(result) -> str:
    if isinstance(result, CliResult):
        return f"rc {result.rc}"
    if hasattr(result, "best") and hasattr(result, "candidates"):
        return f"best {result.best.symbol} p={result.best.probability:.3f}"
    if isinstance(result, list) and result and hasattr(result[0], "best"):
        return (
            f"{len(result)} predictions, first best {result[0].best.symbol} "
            f"p={result[0].best.probability:.3f}"
        )
    if hasattr(result, "two_theta") and hasattr(result, "intensity"):
        wavelength = getattr(result, "wavelength", None)
        return (
            f"{type(result).__name__} with {len(result.two_theta)} points, wavelength {wavelength}"
        )
    if hasattr(result, "species") and hasattr(result, "lattice") and hasattr(result, "frac_coords"):
        lengths = np.round(np.linalg.norm(result.lattice, axis=1), 3).tolist()
        coords = np.round(result.frac_coords, 3).tolist()[:3]
        return (
            f"Crystal with {len(result.species)} sites {list(result.species)[:4]}, cell {lengths}, "
            f"space group {result.space_group}, first coordinates {coords}"
        )
    if isinstance(result, transformers.PretrainedConfig):
        return f"a {type(result).__name__} (accepted)"
    if isinstance(result, list) and result and type(result[0]).__name__ == "SimXRDRecord":
        return f"{len(result)} SimXRD records"
    if isinstance(result, torch.Tensor):
        return f"tensor {tuple(result.shape)} {result.dtype}" + (
            f" = {result.item():.4g}" if result.numel() == 1 else ""
        )
    if isinstance(result, tuple) and result and isinstance(result[0], torch.Tensor):
        return "(" + ", ".join(_describe(r) for r in result) + ")"
    return _short(repr(result), 120)


# -- the CLI ------------------------------------------------------------------------------------


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if "error" in line.lower()]
        return lines[-1] if lines else (self.stderr.strip().splitlines() or [""])[-1]


def _call_main(argv: list[str]) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as stop:  # argparse
            rc = stop.code if isinstance(stop.code, int) else 1
        finally:  # physmoe train switches transformers to INFO
            transformers.utils.logging.set_verbosity_warning()
    return CliResult(int(rc or 0), out.getvalue(), err.getvalue())


def cli_case(
    name: str,
    argv: list,
    *,
    expect: str,
    fragment=None,
    check=None,
    protect=(),
    should: str | None = None,
    after=None,
    entry: str | None = None,
) -> CliResult | None:
    """Run ``physmoe ARGV`` in this process and classify it. Returns the result (or None when
    an exception escaped ``main``)."""
    entry = entry or f"physmoe {argv[0] if argv else ''}".strip()
    should = should or (
        f"exit 1/2 with 'error:' naming {_fragment_text(fragment)}"
        if expect == "error"
        else "exit 0"
    )
    expected_text = "ok" if expect == "ok" else f"error {_fragment_text(fragment)}"
    before = snapshot(protect)
    start = time.perf_counter()
    result = error = None
    with LogCapture():
        try:
            result = _call_main(argv)
        except BaseException as caught:  # noqa: BLE001
            if isinstance(caught, KeyboardInterrupt):
                raise
            error = caught
    seconds = time.perf_counter() - start
    changed = changes(before, snapshot(protect))
    late = after() if after is not None else None
    if changed or late:
        what = _changed_text(changed)
        outcome = (
            (f"rc {result.rc}" + (f": {_short(result.error_line, 160)}" if result.rc else ""))
            if result
            else f"{type(error).__name__}: {error}"
        )
        _record(
            entry, name, expected_text, SIDE, f"{late or what}; then {outcome}", should, seconds
        )
        return result
    if error is not None:
        _record(
            entry,
            name,
            expected_text,
            RAW,
            f"traceback: {type(error).__name__}: {error} (raised in {_raise_site(error)})",
            should,
            seconds,
        )
        return None
    if "Traceback (most recent call last)" in result.stderr:
        _record(
            entry,
            name,
            expected_text,
            RAW,
            f"rc {result.rc}, traceback on stderr: {_short(result.error_line)}",
            should,
            seconds,
        )
        return result
    if expect == "error":
        if result.rc == 0:
            _record(
                entry,
                name,
                expected_text,
                WRONG,
                f"exit 0 (unexpected success); stdout {_short(result.stdout, 120)!r}",
                should,
                seconds,
            )
        elif result.rc not in (1, 2) or (
            "error:" not in result.stderr and not result.stderr.startswith("usage:")
        ):
            _record(
                entry,
                name,
                expected_text,
                RAW,
                f"rc {result.rc} without 'error:' line: {_short(result.stderr[-300:])}",
                should,
                seconds,
            )
        elif fragment is not None and not _matches(result.stderr, fragment):
            _record(
                entry,
                name,
                expected_text,
                RAW,
                f"rc {result.rc}, message does not name the problem: {result.error_line}",
                should,
                seconds,
            )
        else:
            _record(
                entry,
                name,
                expected_text,
                CLEAR,
                f"rc {result.rc}: {result.error_line}",
                should,
                seconds,
            )
        return result
    if result.rc != 0:
        _record(
            entry,
            name,
            expected_text,
            RAW,
            f"valid input refused: rc {result.rc}: {result.error_line}",
            should,
            seconds,
        )
        return result
    problem = (
        check(result, Context(stdout=result.stdout, stderr=result.stderr, seconds=seconds))
        if check
        else None
    )
    _record_check(entry, name, expected_text, problem, "rc 0", should, seconds)
    return result


def child_case(
    entry: str,
    name: str,
    code: str,
    *,
    expect: str,
    fragment=None,
    timeout: float = 90,
    memory_gb: float = 3.0,
    should: str | None = None,
) -> None:
    """A case that may hang or exhaust memory, run in a child process with a time and an
    address-space limit. ``code`` runs with ``result`` bound to its value; the child reports the
    outcome as one JSON line."""
    harness = textwrap.dedent(
        """
        import json, resource, sys, traceback
        limit = int({memory} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
        {body}
            print(json.dumps({{"ok": True, "result": repr(result)[:200]}}))
        except BaseException as error:
            tb = error.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            where = tb.tb_frame.f_code.co_filename.split("/")[-1] + ":" + tb.tb_frame.f_code.co_name
            print(json.dumps({{"ok": False, "type": type(error).__name__,
                               "mro": [c.__name__ for c in type(error).__mro__],
                               "message": str(error)[:500], "where": where}}))
        """
    ).format(memory=memory_gb, body=textwrap.indent(textwrap.dedent(code), "    "))
    should = should or (
        f"a clear error naming {_fragment_text(fragment)}" if expect == "error" else "works"
    )
    expected_text = "ok" if expect == "ok" else f"error {_fragment_text(fragment)}"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", harness],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=TMP,
        )
    except subprocess.TimeoutExpired:
        _record(
            entry,
            name,
            expected_text,
            WRONG,
            f"still running after {timeout:.0f} s (killed): hangs instead of refusing",
            should,
            time.perf_counter() - start,
        )
        return
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        _record(
            entry,
            name,
            expected_text,
            RAW,
            f"child died (rc {proc.returncode}): {_short(proc.stderr[-300:])}",
            should,
            seconds,
        )
        return
    report = json.loads(lines[-1])
    if report["ok"]:
        category = WRONG if expect == "error" else WORKED
        _record(
            entry, name, expected_text, category, f"returned {report['result']}", should, seconds
        )
        return
    message = f"{report['type']}: {report['message']}"
    meaningful = any(kind.__name__ in report["mro"] for kind in MEANINGFUL)
    _record_exception(
        entry,
        name,
        expected_text,
        should,
        seconds,
        expect=expect,
        fragment=fragment,
        error=(message, report["message"], meaningful, report["where"]),
        refused=f"valid input refused: {message}",
    )


# -- fixtures -------------------------------------------------------------------------------------

NACL = EXAMPLES / "NaCl_rocksalt.cif"
RUTILE = EXAMPLES / "TiO2_rutile.cif"
QUARTZ = EXAMPLES / "SiO2_alpha_quartz.cif"
CU, CO, MO = 1.54056, 1.78897, 0.70930


def folder(*parts) -> Path:
    path = TMP.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


_NACL_PEAKS = None


def nacl_peaks():
    global _NACL_PEAKS
    if _NACL_PEAKS is None:
        _NACL_PEAKS = simulate_peaks(NACL)
    return _NACL_PEAKS


def profile(wavelength: float, low: float, high: float, step: float, fwhm: float = 1.2):
    """NaCl's pattern measured at ``wavelength``: Gaussian lines on a flat background, 2θ
    ``low..high``; line widths follow d (``fwhm`` degrees at Cu Kα1), so every wavelength gives
    the same function of d (the feature extractor's conversion is then exact up to
    interpolation)."""
    peaks = nacl_peaks()
    d = peaks.d_spacing
    two_theta = np.round(np.arange(low, high, step), 6)
    sin_theta = wavelength / (2 * d)
    keep = sin_theta < 1
    theta = np.arcsin(sin_theta[keep])
    theta_cu = np.arcsin(np.minimum(CU / (2 * d[keep]), 1.0))
    centres = np.degrees(2 * theta)
    sigma = fwhm / 2.3548 * np.tan(theta) / np.tan(theta_cu)  # d(2θ)/dd ∝ tan θ
    intensity = 20.0 + (
        peaks.intensity[keep, None]
        * 10
        * np.exp(-0.5 * ((two_theta[None] - centres[:, None]) / sigma[:, None]) ** 2)
    ).sum(0)
    return two_theta, intensity


def xy_text(two_theta, intensity, header: str = "", fmt: str = "{:.3f} {:.2f}") -> str:
    lines = [header] if header else []
    lines += [fmt.format(t, i) for t, i in zip(two_theta, intensity, strict=False)]
    return "\n".join(lines) + "\n"


def small_dataset() -> Path:
    """60 embedded structures of 4 groups (2, 14, 62, 225), built like the default dataset (as
    tests/test_cli.py's small_dataset fixture)."""
    from tiny_training import small_embedded_dataset

    return small_embedded_dataset(folder("data"))


def train_settings(data_path: Path | str, output_dir: Path, **extra) -> dict:
    from tiny_training import tiny_train_settings

    defaults = {
        "num_train_epochs": 1,
        "bootstrap_samples": 20,
        "plots": False,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    return tiny_train_settings(data_path, output_dir, **{**defaults, **extra})


def write_config(path: Path, settings: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings))
    return path


class Fixtures:
    dataset: Path
    model: Path  # a trained tiny model folder (or an untrained one if training failed)
    trained: bool
    predictor = None
    clean_input: torch.Tensor  # NaCl's CIF pattern on the model grid
    clean_result = None


FX = Fixtures()


def _untrained_model(path: Path) -> Path:
    from physmoe import XRDFeatureExtractor
    from tiny_models import tiny_model

    model = tiny_model(seed=0)
    model.save_pretrained(path)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(path)
    return path


def copy_model(name: str) -> Path:
    target = TMP / "models" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(FX.model, target, ignore=shutil.ignore_patterns("checkpoint-*"))
    return target


# -- checks -------------------------------------------------------------------------------------


def same_prediction(reference, tolerance: float = 1e-3):
    """Check: the same best group as ``reference`` with a best probability within ``tolerance``."""

    def check(result, ctx):
        result = result[0] if isinstance(result, list) else result
        if result.best.space_group != reference.best.space_group:
            return (
                f"best {result.best.symbol} p={result.best.probability:.3f}, the clean input gives "
                f"{reference.best.symbol} p={reference.best.probability:.3f}"
            )
        if abs(result.best.probability - reference.best.probability) > tolerance:
            return (
                f"best probability {result.best.probability:.4f}, the clean input gives "
                f"{reference.best.probability:.4f}"
            )
        return None

    return check


def wavelength_is(expected: float | None, tolerance: float = 1e-4):
    def check(result, ctx):
        value = result.wavelength
        if expected is None:
            return (
                None
                if value is None
                else f"wavelength read as {value:g} A from a header that states none"
            )
        if value is None:
            return f"wavelength not read (None); the header states {expected:g} A"
        if abs(value - expected) > tolerance:
            return f"wavelength {value:g} A, the header states {expected:g} A"
        return None

    return check


def all_of(*checks):
    def check(result, ctx):
        for item in checks:
            problem = item(result, ctx)
            if problem:
                return problem
        return None

    return check


def points_are(count: int):
    def check(result, ctx):
        return (
            None
            if len(result.two_theta) == count
            else f"{len(result.two_theta)} points read, the file has {count}"
        )

    return check


def json_check(fn):
    """A CLI check on ``--json`` output: ``fn(list_of_dicts)`` returns None or a problem."""

    def check(result, ctx):
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError as error:
            return f"stdout is not JSON ({error}): {_short(result.stdout, 100)!r}"
        return fn(answer)

    return check


# ===================================================================================== groups


def group_setup() -> None:
    """The small dataset and the model the prediction cases use: trained by ``physmoe train``
    (itself a case)."""
    FX.dataset = small_dataset()
    out = TMP / "runs" / "base"
    from tiny_models import TINY

    # cross-entropy without the hierarchy: decisive after a few seconds, so that "the same answer
    # as the clean input" means something
    overrides = {**TINY, "loss_preset": "cross_entropy", "hierarchical_inference": "none"}
    config = write_config(
        TMP / "configs" / "base.yaml",
        train_settings(
            FX.dataset, out, num_train_epochs=8, learning_rate=1e-2, model_overrides=overrides
        ),
    )

    def trained(result, ctx):
        missing = [
            n
            for n in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
            if not (out / n).is_file()
        ]
        if missing:
            return f"finished with rc 0 but {missing} missing from the output folder"
        return None if "Top-1 accuracy" in result.stdout else "no test table printed"

    cli_case(
        "valid tiny config (8 epochs, 4 groups)",
        ["train", config],
        expect="ok",
        check=trained,
        entry="physmoe train",
    )
    FX.trained = (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    FX.model = out if FX.trained else _untrained_model(TMP / "runs" / "untrained")
    from physmoe.inference import SpaceGroupPredictor

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        FX.predictor = SpaceGroupPredictor.from_pretrained(FX.model)
        FX.clean_input = FX.predictor.pattern_from_cif(NACL)
        FX.clean_result = FX.predictor.predict_input_values(FX.clean_input)[0]
    print(
        f"   reference: NaCl -> {FX.clean_result.best.symbol} "
        f"p={FX.clean_result.best.probability:.3f} "
        f"({'trained' if FX.trained else 'UNTRAINED fallback'} model)",
        file=sys.__stdout__,
        flush=True,
    )


# ----------------------------------------------------------------------------------- read_pattern


HEADERS_OK = [
    ("header 'Wavelength: 1.5406 Å'", "# Wavelength: 1.5406 Å", 1.5406),
    ("header in nm (0.154056 nm)", "# wavelength = 0.154056 nm", 1.54056),
    ("header in pm (λ = 154.056 pm)", "# λ = 154.056 pm", 1.54056),
    (
        "'Anode Cu, wavelength type K-Alpha1, scan time 1.2 s/step'",
        "# Anode Cu, wavelength type K-Alpha1, scan time 1.2 s/step",
        CU,
    ),
    ("Kα1 and Kα2 listed", "# Kα1 = 1.54056 Å, Kα2 = 1.54439 Å", 1.54056),
    (
        "PANalytical export with K-Alpha2/K-Alpha1 ratio 0.5",
        "# K-Alpha1 wavelength 1.540598, K-Alpha2 wavelength 1.544426, Ratio K-Alpha2/K-Alpha1 0.5",
        1.540598,
    ),
    (
        "FullProf-style 'Lambda1 .. Lambda2 .. Ratio 0.5'",
        "# Lambda1 1.54056 Lambda2 1.54439 Ratio 0.5",
        1.54056,
    ),
    ("anode only: 'Radiation: Co'", "# Radiation: Co", CO),
    ("anode only: 'Anode Mo'", "# Anode Mo", MO),
    ("anode only: 'CuKa1'", "# CuKa1", CU),
    ("anode by name: 'Target: copper'", "# Target: copper", CU),
    ("anode after element: 'Co anode, 40 kV, 30 mA'", "# Co anode, 40 kV, 30 mA", CO),
    ("'X-ray tube: Co anode'", "# X-ray tube: Co anode", CO),
    ("bracketed unit 'Wavelength (A): 0.7093'", "# Wavelength (A): 0.7093", 0.7093),
    ("unitless 'lambda = 1.78897' (0.3-3)", "# lambda = 1.78897", 1.78897),
    ("'Wavelength: 1.5406 Angstrom'", "# Wavelength: 1.5406 Angstrom", 1.5406),
    ("'Cu Kα 1.5418 Å' (doublet mean)", "# Cu Kα 1.5418 Å", 1.5418),
    ("'Cu-Ka (1.5418 A)'", "# Cu-Ka (1.5418 A)", 1.5418),
    ("'Wavelength: 0.71073 Å (Mo Kα)'", "# Wavelength: 0.71073 Å (Mo Kα)", 0.71073),
    ("Kβ filter mentioned after Cu Kα", "# Radiation: Cu Kα, Ni filter (Kβ removed)", CU),
    ("Kb filter with its thickness", "# Anode: Cu; Kb filter: Ni 0.02 mm", CU),
    ("Kα1/Kα2/Kβ all listed", "# Kα1 1.5406 Å; Kα2 1.5444 Å; Kβ 1.3922 Å", 1.5406),
    ("no spaces: 'WAVELENGTH=1.5406A'", "# WAVELENGTH=1.5406A", 1.5406),
    ("header line without a comment character", "Wavelength: 1.78897 A\n2theta intensity", 1.78897),
    ("'Kα2 stripped, wavelength 1.5406 Å'", "# Kα2 stripped, wavelength 1.5406 Å", 1.5406),
    (
        "synchrotron 'Source: synchrotron, wavelength 0.4959 A'",
        "# Source: synchrotron, wavelength 0.4959 A",
        0.4959,
    ),
    (
        "header with instrument numbers, then Co anode",
        "# 40 kV, 40 mA, step 0.02 deg\n# Anode: Co",
        CO,
    ),
]
HEADERS_NONE = [
    ("instrument numbers only (kV, mA, step, s/step)", "# 40 kV, 40 mA, step 0.02 deg, 1.5 s/step"),
    ("temperature in K ('T = 1.5 K')", "# T = 1.5 K, p = 1 bar"),
    ("file name containing 'Cu'", "# sample Cu_foil_2, measured 2024-05-01"),
    ("column header '2theta intensity'", "2theta intensity"),
    ("'Kapton window 0.5 mm'", "# Kapton window 0.5 mm"),
    ("'Ka2 stripped' without a value", "# Detector: LynxEye, Ka2 stripped"),
]
HEADERS_AMBIGUOUS = [
    ("unitless 0.154 (nm or Å?)", "# Wavelength: 0.154"),
    ("two different Kα1 values", "# Kα1 = 1.5406 Å\n# Kα1 = 1.7890 Å"),
    ("two different plain values", "# Wavelength 1.5406 A\n# Wavelength 0.7093 A"),
    ("only Kα2", "# Kα2 = 1.54439 Å"),
    ("only Kβ", "# Kβ = 1.39222 Å"),
    ("value contradicting the anode", "# Anode Cu, wavelength 0.7093 A"),
    ("two anodes", "# Anode Cu\n# Radiation: Mo"),
    ("'Wavelength: unknown'", "# Wavelength: unknown"),
    ("'Wavelength: 15 Å' (no X-ray wavelength)", "# Wavelength: 15 Å"),
]


def group_read_pattern() -> None:
    entry = "read_pattern"
    root = folder("patterns")
    tt, inten = profile(CU, 5.0, 90.0, 0.05)
    n = len(tt)
    base = write_text(root / "clean.xy", xy_text(tt, inten))

    case = case_of(entry, read_pattern, protect=lambda path: [path])

    def data_match(result, ctx):
        if len(result.two_theta) != n:
            return f"{len(result.two_theta)} points read, the file has {n}"
        if not np.allclose(result.two_theta, tt, atol=1e-3) or not np.allclose(
            result.intensity, inten, atol=0.01
        ):
            return "values differ from the file's"
        return None

    case("clean two-column .xy", base, "ok", check=all_of(data_match, wavelength_is(None)))
    # -- headers
    for index, (name, header, value) in enumerate(HEADERS_OK):
        path = write_text(root / f"header_ok_{index}.xy", header + "\n10 1\n11 2\n12 3\n")
        case(
            name,
            path,
            "ok",
            check=all_of(wavelength_is(value), points_are(3)),
            should=f"wavelength {value:g} A",
        )
    for index, (name, header) in enumerate(HEADERS_NONE):
        path = write_text(root / f"header_none_{index}.xy", header + "\n10 1\n11 2\n12 3\n")
        case(
            name,
            path,
            "ok",
            check=all_of(wavelength_is(None), points_are(3)),
            should="no wavelength read (None)",
        )
    for index, (name, header) in enumerate(HEADERS_AMBIGUOUS):
        path = write_text(root / f"header_bad_{index}.xy", header + "\n10 1\n11 2\n12 3\n")
        case(f"ambiguous header: {name}", path, "error", fragment="ambiguous")
    path = write_text(root / "ambiguous_given.xy", "# Wavelength: 0.154\n10 1\n11 2\n")
    case(
        "ambiguous header but wavelength=1.5406 given",
        path,
        "ok",
        check=wavelength_is(1.5406),
        wavelength=1.5406,
    )
    path = write_text(
        root / "latin1_header.xy", "# Wavelength: 1.78897 Å\n10 1\n11 2\n", encoding="latin-1"
    )
    case("latin-1 header with 'Å'", path, "ok", check=wavelength_is(1.78897))
    # -- formats that must work
    formats = [
        (
            "comma-separated with a text header",
            "2theta,intensity\n"
            + "".join(f"{t:.3f},{i:.2f}\n" for t, i in zip(tt, inten, strict=True)),
        ),
        (
            "semicolon-separated",
            "".join(f"{t:.3f};{i:.2f}\n" for t, i in zip(tt, inten, strict=True)),
        ),
        ("tab-separated", "".join(f"{t:.3f}\t{i:.2f}\n" for t, i in zip(tt, inten, strict=True))),
        (
            "decimal commas, space-separated",
            "".join(f"{t:.3f} {i:.2f}\n".replace(".", ",") for t, i in zip(tt, inten, strict=True)),
        ),
        (
            "decimal commas, semicolon-separated",
            "".join(f"{t:.3f};{i:.2f}\n".replace(".", ",") for t, i in zip(tt, inten, strict=True)),
        ),
        (
            "Fortran D exponents",
            "".join(f"{t:.6E} {i:.6E}\n".replace("E", "D") for t, i in zip(tt, inten, strict=True)),
        ),
        (
            "descending 2θ",
            "".join(f"{t:.3f} {i:.2f}\n" for t, i in reversed(list(zip(tt, inten, strict=True)))),
        ),
        ("Windows CRLF line ends", xy_text(tt, inten).replace("\n", "\r\n")),
        ("old Mac CR-only line ends", xy_text(tt, inten).replace("\n", "\r")),
        (
            "inline comments after values",
            "".join(
                f"{t:.3f} {i:.2f}  # point {k}\n"
                for k, (t, i) in enumerate(zip(tt, inten, strict=True))
            ),
        ),
        (
            "blank lines and '!' / ';' comments",
            "! comment\n; other\n\n" + xy_text(tt, inten).replace("\n", "\n\n"),
        ),
        (
            "leading/trailing whitespace",
            "".join(f"   {t:.3f}    {i:.2f}   \n" for t, i in zip(tt, inten, strict=True)),
        ),
    ]
    for index, (name, text) in enumerate(formats):
        path = write_text(root / f"format_{index}.xy", text)
        case(name, path, "ok", check=data_match)
    integer_counts = write_text(
        root / "integers.xy",
        "".join(f"{t:.3f} {int(round(i))}\n" for t, i in zip(tt, inten, strict=True)),
    )
    case("integer counts", integer_counts, "ok", check=points_are(n))
    sigma = write_text(
        root / "sigma.xye",
        "".join(f"{t:.3f} {i:.2f} {math.sqrt(i):.2f}\n" for t, i in zip(tt, inten, strict=True)),
    )
    case(
        "three columns with sigma (.xye)",
        sigma,
        "ok",
        check=lambda r, c: None if r.sigma is not None and len(r.sigma) == n else "sigma not read",
    )
    negative = write_text(root / "negative.xy", xy_text(tt, inten - 40))
    case("background-subtracted (some negative intensities)", negative, "ok", check=points_are(n))
    single = write_text(root / "single.xy", "10 1\n")
    case(
        "a single data line", single, "ok", check=points_are(1), should="read (predict refuses it)"
    )
    text = xy_text(tt, inten)
    encodings = [
        ("UTF-8 byte-order mark", b"\xef\xbb\xbf" + text.encode()),
        ("UTF-16 LE with BOM", text.encode("utf-16")),
        ("UTF-16 LE without BOM", text.encode("utf-16-le")),
        ("UTF-16 BE without BOM", text.encode("utf-16-be")),
        ("leading NUL bytes", b"\x00" * 16 + text.encode()),
        ("gzip-compressed", gzip.compress(text.encode(), mtime=0)),
        ("bzip2-compressed", bz2.compress(text.encode())),
        ("xz-compressed", lzma.compress(text.encode())),
    ]
    for index, (name, data) in enumerate(encodings):
        path = write_bytes(root / f"encoding_{index}.xy", data)
        case(name, path, "ok", check=data_match)
    gz_name = write_bytes(root / "clean.xy.gz", gzip.compress(text.encode(), mtime=0))
    case("'.xy.gz' file name", gz_name, "ok", check=data_match)
    # -- silently dropped lines?
    thousands = write_text(
        root / "thousands.xy", "5.00 1,234.5\n5.05 1,100.0\n5.10 980.0\n5.15 870.5\n5.20 640.0\n"
    )
    case(
        "thousands separators in the first lines ('5.00 1,234.5')",
        thousands,
        "error",
        fragment=("1,234", "line 1"),
        should=(
            "an error naming line 1 (or all 5 points read), never the "
            "first lines dropped as a header"
        ),
    )
    typo = write_text(root / "typo_first.xy", "10.0 12a\n" + xy_text(tt[10:20], inten[10:20]))
    case(
        "typo in the first data line ('10.0 12a')",
        typo,
        "error",
        fragment=("12a", "line 1"),
        should="an error naming line 1, not the line silently taken as a header",
    )
    # -- malformed files
    bad = [
        ("empty file", "", "no data lines"),
        ("comments only", "# Wavelength 1.5406 A\n# nothing else\n", "no data lines"),
        ("text only (a CIF)", NACL.read_text(), "no data lines"),
        ("one column", "10\n11\n12\n", "expected 2 columns"),
        ("four columns", "10 1 2 3\n11 1 2 3\n", "got 4"),
        ("column count changes", "10 1\n11 1 0.5\n", "columns"),
        ("non-numeric line in the middle", "10 1\n11 2\nbroken line\n12 3\n", "cannot parse"),
        ("NaN intensity", "10 1\n11 nan\n12 3\n", "non-finite"),
        ("inf intensity", "10 1\n11 inf\n12 3\n", "non-finite"),
        ("negative 2θ", "-1 5\n10 1\n", "outside (0, 180)"),
        ("2θ = 0", "0 5\n10 1\n", "outside (0, 180)"),
        ("2θ = 180", "170 5\n180 1\n", "outside (0, 180)"),
        ("repeated 2θ", "10 1\n10 2\n11 3\n", "monotonic"),
        ("non-monotonic 2θ", "10 1\n12 2\n11 3\n", "monotonic"),
        (
            "2θ rounded to 0.1 with 0.02 steps (repeats)",
            "".join(f"{round(10 + 0.02 * k, 1):.1f} {k}\n" for k in range(20)),
            "monotonic",
        ),
        ("negative sigma", "10 1 1\n11 2 -1\n", "negative sigma"),
        (
            "columns swapped (intensity, 2θ)",
            "".join(f"{i:.2f} {t:.3f}\n" for t, i in zip(tt, inten, strict=True)),
            ("monotonic", "outside"),
        ),
    ]
    for index, (name, content, fragment) in enumerate(bad):
        path = write_text(root / f"bad_{index}.xy", content)
        case(name, path, "error", fragment=fragment)
    binaries = [
        (
            "random binary bytes",
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "binary_0.xy",
        ),
        (
            "a PNG image renamed .xy",
            b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
            "binary_1.xy",
        ),
        ("truncated gzip", gzip.compress(text.encode(), mtime=0)[:40], "binary_2.xy"),
        ("a zip archive", None, "binary_3.xy"),
    ]
    for name, data, filename in binaries:
        path = root / filename
        if data is None:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("scan.xy", text)
        else:
            write_bytes(path, data)
        case(name, path, "error", fragment=(filename, "binary", "decompress", "zip"))
    case("missing file", root / "absent.xy", "error", fragment="absent.xy")
    case("a directory", root, "error", fragment=("directory", "patterns"))
    case("encoding='bogus'", base, "error", fragment="bogus", encoding="bogus")
    latin = write_bytes(root / "latin1_data.xy", "# Å\n10 1\n11 2\n".encode("latin-1"))
    case(
        "encoding='ascii' on a latin-1 file",
        latin,
        "error",
        fragment=("ascii", "decode"),
        encoding="ascii",
    )
    case(
        "delimiter='|' on a space-separated file",
        base,
        "error",
        fragment=("cannot parse", "no data lines", "columns"),
        delimiter="|",
    )
    # -- the wavelength argument
    for name, value, fragment in [
        ("wavelength=0", 0.0, "wavelength"),
        ("wavelength=nan", float("nan"), "wavelength"),
        ("wavelength='1.54' (a string)", "1.54", "wavelength"),
        ("wavelength=True", True, "wavelength"),
    ]:
        case(name, base, "error", fragment=fragment, wavelength=value)
    case(
        "wavelength=1.78897 given, no header",
        base,
        "ok",
        check=wavelength_is(1.78897),
        wavelength=1.78897,
    )
    path = write_text(root / "header_given.xy", "# Wavelength: 1.5406 A\n10 1\n11 2\n")
    case(
        "header 1.5406 but wavelength=0.7093 given (the argument wins)",
        path,
        "ok",
        check=wavelength_is(0.7093),
        wavelength=0.7093,
    )


# --------------------------------------------------------------------------------------- read_cif


def cif(
    name: str,
    cell: str | None,
    sites: str,
    symmetry: str = "_symmetry_space_group_name_H-M 'P 1'\n",
    extra: str = "",
) -> str:
    cell_text = cell if cell is not None else ""
    return f"data_{name}\n{symmetry}{cell_text}{extra}{sites}"


CUBIC_CELL = "".join(f"_cell_length_{a} 5.64\n" for a in "abc") + "".join(
    f"_cell_angle_{a} 90\n" for a in ("alpha", "beta", "gamma")
)
SITES_HEADER = (
    "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
    "_atom_site_fract_z\n_atom_site_occupancy\n"
)


def group_read_cif() -> None:
    entry = "read_cif"
    root = folder("cifs")

    def case(name, text_or_path, expect, fragment=None, check=None, should=None, encoding="utf-8"):
        if isinstance(text_or_path, Path):
            path = text_or_path
        elif isinstance(text_or_path, bytes):
            path = write_bytes(root / f"{len(list(root.iterdir()))}.cif", text_or_path)
        else:
            path = write_text(
                root / f"{len(list(root.iterdir()))}.cif", text_or_path, encoding=encoding
            )
        run_case(
            entry,
            name,
            lambda: read_cif(path),
            expect=expect,
            fragment=fragment,
            check=check,
            protect=[path] if path.exists() else [],
            should=should,
        )

    def sites_are(count, space_group=None):
        def check(result, ctx):
            if len(result.species) != count:
                return f"{len(result.species)} sites, expected {count}"
            if space_group is not None and result.space_group != space_group:
                return f"space group {result.space_group}, expected {space_group}"
            return None

        return check

    def cell_is(a, b, c):
        def check(result, ctx):
            lengths = np.linalg.norm(result.lattice, axis=1)
            if not np.allclose(lengths, [a, b, c], atol=1e-3):
                return f"cell lengths {np.round(lengths, 3).tolist()}, the file says {[a, b, c]}"
            return None

        return check

    nacl_sites = SITES_HEADER + "Na1 Na 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n"
    case("NaCl example", NACL, "ok", check=sites_are(8, 225))
    case("rutile example", RUTILE, "ok", check=sites_are(6))
    case(
        "only _symmetry_Int_Tables_number 225 and the asymmetric unit",
        cif("n", CUBIC_CELL, nacl_sites, symmetry="_symmetry_Int_Tables_number 225\n"),
        "ok",
        check=sites_are(8, 225),
    )
    case(
        "H-M symbol 'F m -3 m' and the asymmetric unit",
        cif("n", CUBIC_CELL, nacl_sites, symmetry="_symmetry_space_group_name_H-M 'F m -3 m'\n"),
        "ok",
        check=sites_are(8, 225),
    )
    case(
        "no symmetry at all (P1 assumed)",
        cif("n", CUBIC_CELL, nacl_sites, symmetry=""),
        "ok",
        check=sites_are(2),
    )
    case(
        "uncertainties '5.6402(3)' and '0.25(1)'",
        cif(
            "n",
            CUBIC_CELL.replace("5.64", "5.6402(3)"),
            SITES_HEADER + "Na1 Na 0 0 0 1\nCl1 Cl 0.5 0.5 0.5(1) 1\n",
        ),
        "ok",
        check=sites_are(2),
    )
    case(
        "ionic type symbols 'Na1+' / 'Cl1-'",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na1+ 0 0 0 1\nCl1 Cl1- 0.5 0.5 0.5 1\n"),
        "ok",
        check=sites_are(2),
    )
    case(
        "occupancy 1.0005 (rounding)",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na 0 0 0 1.0005\nCl1 Cl 0.5 0.5 0.5 1\n"),
        "ok",
        check=sites_are(2),
    )
    case(
        "UTF-8 byte-order mark",
        b"\xef\xbb\xbf" + cif("n", CUBIC_CELL, nacl_sites).encode(),
        "ok",
        check=sites_are(2),
    )
    case(
        "Windows CRLF line ends",
        cif("n", CUBIC_CELL, nacl_sites).replace("\n", "\r\n"),
        "ok",
        check=sites_are(2),
    )
    case(
        "a global block before the structure",
        "data_global\n_journal_name_full 'X'\n" + cif("n", CUBIC_CELL, nacl_sites),
        "ok",
        check=sites_are(2),
    )
    case(
        "only _cell_length_a given",
        cif("n", "_cell_length_a 5.64\n", nacl_sites),
        "error",
        fragment="cell",
    )
    case(
        "cell lengths a, b only (c missing)",
        cif(
            "n",
            (
                "_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_angle_alpha 90\n"
                "_cell_angle_beta 90\n_cell_angle_gamma 90\n"
            ),
            nacl_sites,
        ),
        "error",
        fragment=("cell", "_cell_length_c"),
    )
    case(
        "cell angles missing (lengths only)",
        cif("n", "".join(f"_cell_length_{a} 5.64\n" for a in "abc"), nacl_sites),
        "either",
        fragment="_cell_angle",
        check=cell_is(5.64, 5.64, 5.64),
        should="a clear error naming the angles, or angles of 90 (the CIF default)",
    )
    case("missing cell", cif("n", None, nacl_sites), "error", fragment="cell")
    case(
        "zero cell length",
        cif("n", CUBIC_CELL.replace("_cell_length_b 5.64", "_cell_length_b 0"), nacl_sites),
        "error",
        fragment=("cell", "length"),
    )
    case(
        "negative cell length",
        cif("n", CUBIC_CELL.replace("_cell_length_b 5.64", "_cell_length_b -5.64"), nacl_sites),
        "error",
        fragment=("cell", "length", "positive"),
    )
    case(
        "impossible angles (alpha=beta=gamma=150)",
        cif("n", CUBIC_CELL.replace(" 90", " 150"), nacl_sites),
        "error",
        fragment=("angle", "cell"),
    )
    case(
        "cell in pm (a = 564 'Å')",
        cif("n", CUBIC_CELL.replace("5.64", "564"), nacl_sites),
        "ok",
        check=cell_is(564, 564, 564),
        should="read as stated (simulation of it is surveyed separately)",
    )
    case(
        "negative occupancy",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na 0 0 0 -0.5\nCl1 Cl 0.5 0.5 0.5 1\n"),
        "error",
        fragment="occupancy",
    )
    case(
        "occupancy 1.5",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na 0 0 0 1.5\nCl1 Cl 0.5 0.5 0.5 1\n"),
        "error",
        fragment="occupancy",
    )
    case(
        "all occupancies 0",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na 0 0 0 0\nCl1 Cl 0.5 0.5 0.5 0\n"),
        "error",
        fragment="occupancy",
    )
    case(
        "unknown element 'Xx'",
        cif("n", CUBIC_CELL, SITES_HEADER + "Xx1 Xx 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n"),
        "error",
        fragment="Xx",
    )
    case(
        "coordinate '?' (unknown)",
        cif("n", CUBIC_CELL, SITES_HEADER + "Na1 Na ? 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n"),
        "error",
        fragment=("Na1", "coordinate", "NaN", "?"),
    )
    case(
        "unrecognised space-group symbol, no operations",
        cif("n", CUBIC_CELL, nacl_sites, symmetry="_symmetry_space_group_name_H-M 'Q 7 z'\n"),
        "error",
        fragment="Q 7 z",
    )
    case(
        "space-group number 231",
        cif("n", CUBIC_CELL, nacl_sites, symmetry="_symmetry_Int_Tables_number 231\n"),
        "error",
        fragment="231",
        should=(
            "a clear error naming 231 (today: P1 with the warning 'no space group "
            "or symmetry operations given')"
        ),
    )
    case("no atom-site loop", cif("n", CUBIC_CELL, ""), "error", fragment="atom")
    case(
        "Cartesian sites only (_atom_site_Cartn_x)",
        cif(
            "n",
            CUBIC_CELL,
            (
                "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_Cartn_x\n"
                "_atom_site_Cartn_y\n_atom_site_Cartn_z\nNa1 Na 0 0 0\nCl1 Cl 2.82 2.82 2.82\n"
            ),
        ),
        "ok",
        check=lambda r, c: (
            None
            if np.allclose(
                np.sort(np.asarray(r.frac_coords), axis=0), [[0, 0, 0], [0.5, 0.5, 0.5]], atol=1e-3
            )
            else f"positions {np.asarray(r.frac_coords).tolist()}"
        ),
        should="the Cartesian positions converted with the cell, never every atom at the origin",
    )
    case("empty file", "", "error", fragment="empty")
    case("whitespace only", "   \n\n", "error", fragment=("empty", "data block"))
    case(
        "no data block (plain text)",
        "this is not a cif\n",
        "error",
        fragment=("data block", "parse", "CIF"),
    )
    case(
        "a two-column pattern renamed .cif",
        "10 1\n11 2\n",
        "error",
        fragment=("data block", "CIF", "parse"),
    )
    case(
        "UTF-16 encoded CIF",
        cif("n", CUBIC_CELL, nacl_sites),
        "error",
        fragment=("UTF-16", "encoding", "parse", "CIF"),
        encoding="utf-16",
        should="read it, or a clear error naming the file",
    )
    case(
        "binary garbage",
        np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "error",
        fragment=("CIF", "parse", "data block"),
    )
    case(
        "duplicate _cell_length_a tags",
        cif("n", CUBIC_CELL + "_cell_length_a 5.64\n", nacl_sites),
        "either",
        fragment=("duplicate", "_cell_length_a"),
        check=sites_are(2),
        should="read (pymatgen fallback) or a clear error",
    )
    case("missing file", root / "absent.cif", "error", fragment="absent.cif")
    case("a directory", root, "error", fragment=("directory", "cifs", "not found"))


# ------------------------------------------------------------------------------------ read_simxrd


def _simxrd_db(path: Path, rows=None) -> Path:
    import ase.db
    from ase import Atoms

    d = np.array([3.2, 2.8, 2.0, 1.7, 1.6, 1.4])
    rows = rows or [
        {"tager": "[225, 1, 'F']"},
        {"tager": "[2, 7, 'P']"},
        {"tager": "[194, 2, 'P']"},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with ase.db.connect(str(path)) as database:
        for row in rows:
            values = {
                "latt_dis": str(d.tolist()),
                "intensity": "[100, 50, 30, 20, 10, 5]",
                "chem_form": "X",
                **row,
            }
            database.write(Atoms("Na"), **values)
    return path


def group_read_simxrd() -> None:
    entry = "read_simxrd"
    root = folder("simxrd")

    case = case_of(entry, read_simxrd, protect=lambda path: [path.parent])

    def count_is(count):
        return lambda result, ctx: (
            None if len(result) == count else f"{len(result)} records, expected {count}"
        )

    good = _simxrd_db(root / "good" / "simxrd.db")
    case("valid database", good, "ok", check=count_is(3))
    case("limit=1", good, "ok", check=count_is(1), limit=1)
    case(
        "limit=0",
        good,
        "ok",
        check=count_is(0),
        limit=0,
        should="no records (or a clear error): not all of them",
    )
    case("limit=-1", good, "error", fragment="limit", limit=-1)
    case("selection 'id>=2'", good, "ok", check=count_is(2), selection="id>=2")
    case(
        "malformed selection 'id>>2'",
        good,
        "error",
        fragment=("id>>2", "selection"),
        selection="id>>2",
    )
    case("wavelength=0.7093 (Mo)", good, "ok", check=count_is(3), wavelength=0.7093)
    for name, value in [
        ("wavelength=0", 0.0),
        ("wavelength=-1", -1.0),
        ("wavelength=nan", float("nan")),
        ("wavelength='1.54' (a string)", "1.54"),
    ]:
        case(name, good, "error", fragment="wavelength", wavelength=value)
    case("missing file (not created)", root / "absent" / "none.db", "error", fragment="none.db")
    empty = write_bytes(root / "empty" / "empty.db", b"")
    case("empty .db file (left alone)", empty, "error", fragment="empty")
    foreign = root / "foreign" / "measurements.db"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(foreign)) as connection, connection:
        connection.execute("CREATE TABLE measurements (angle REAL, counts REAL)")
        connection.execute("INSERT INTO measurements VALUES (10.0, 5.0)")
    case("foreign SQLite database (left alone)", foreign, "error", fragment="measurements")
    text = write_text(root / "text" / "pattern.db", "10 1\n11 2\n")
    case("a text file named .db", text, "error", fragment=("not a database", "SimXRD"))
    case("a directory", root / "good", "error", fragment=("directory", "not found", "good"))
    rows = [
        (
            "tager with crystal system contradicting the group",
            {"tager": "[225, 3, 'F']"},
            "crystal system",
        ),
        ("space group 231 in tager", {"tager": "[231, 1, 'F']"}, "231"),
        ("space group 0 in tager", {"tager": "[0, 7, 'P']"}, ("space group 0", "outside")),
        ("tager with one entry", {"tager": "[225]"}, "tager"),
        ("tager not a list ('cubic')", {"tager": "cubic"}, "tager"),
        ("latt_dis with text", {"latt_dis": "[3.0, oops, 1.5, 1, 1, 1]"}, "latt_dis"),
        ("latt_dis truncated print-out", {"latt_dis": "[3.0 2.0 ... 1.5]"}, "truncated"),
        ("latt_dis / intensity lengths differ", {"latt_dis": "[3.0, 2.0]"}, "latt_dis"),
        ("negative d-spacing", {"latt_dis": "[3.0, -2.0, 1.0, 1, 1, 1]"}, "non-positive"),
        ("intensity with NaN", {"intensity": "[1, nan, 3, 4, 5, 6]"}, "intensity"),
        ("missing intensity key", {"intensity": None}, "intensity"),
    ]
    for index, (name, row, fragment) in enumerate(rows):
        values = {k: v for k, v in row.items() if v is not None}
        path = root / f"row_{index}" / "bad.db"
        if row.get("intensity", "") is None:
            import ase.db
            from ase import Atoms

            path.parent.mkdir(parents=True, exist_ok=True)
            with ase.db.connect(str(path)) as database:
                database.write(
                    Atoms("Na"), latt_dis="[3.0, 2.0]", tager="[225, 1, 'F']", chem_form="X"
                )
        else:
            _simxrd_db(path, rows=[values])
        case(name, path, "error", fragment=fragment)


# ------------------------------------------------------------------------------ read_reference_npy


def group_read_reference_npy() -> None:
    entry = "read_reference_npy"
    root = folder("reference")
    rng = np.random.default_rng(2)
    intensity = rng.uniform(0, 100, (3, 8500)).astype(np.float32)
    labels = np.array([0, 13, 224])

    case = case_of(
        entry, read_reference_npy, protect=lambda path: [path] if Path(path).exists() else []
    )

    def saved(name, content, allow=True):
        path = root / name
        np.save(path, content, allow_pickle=allow)
        return path

    def labels_are(expected):
        return lambda r, c: (
            None
            if np.array_equal(r.labels, expected)
            else f"labels {r.labels.tolist()}, expected {list(expected)}"
        )

    pickled = saved("pickled.npy", {"intensitys": intensity, "labels230": labels})
    case(
        "pickled dict with allow_pickle=True",
        pickled,
        "ok",
        check=labels_are(labels),
        allow_pickle=True,
    )
    case("pickled dict without allow_pickle", pickled, "error", fragment="allow_pickle")
    npz = root / "plain.npz"
    np.savez(npz, intensitys=intensity, labels230=labels)
    case(".npz of plain arrays", npz, "ok", check=labels_are(labels))
    case(
        "'features' key and float labels",
        saved("features.npy", {"features": intensity, "labels230": labels.astype(float)}),
        "ok",
        check=labels_are(labels),
        allow_pickle=True,
    )
    case(
        "labels as a column [N, 1]",
        saved("column.npy", {"intensitys": intensity, "labels230": labels[:, None]}),
        "ok",
        check=labels_are(labels),
        allow_pickle=True,
    )
    case(
        "integer intensities",
        saved("ints.npy", {"intensitys": intensity.astype(np.int32), "labels230": labels}),
        "ok",
        check=lambda r, c: None if r.intensity.dtype.kind == "f" else f"dtype {r.intensity.dtype}",
        allow_pickle=True,
    )
    case(
        "zero patterns",
        saved(
            "zero.npy",
            {"intensitys": np.zeros((0, 8500), np.float32), "labels230": np.zeros(0, int)},
        ),
        "ok",
        check=lambda r, c: None if len(r) == 0 else f"{len(r)} rows",
        allow_pickle=True,
    )
    bad = [
        (
            "labels 230 (1-based?)",
            {"intensitys": intensity, "labels230": np.array([1, 14, 230])},
            "0..229",
        ),
        ("negative label", {"intensitys": intensity, "labels230": np.array([-1, 0, 1])}, "0..229"),
        (
            "fractional labels",
            {"intensitys": intensity, "labels230": np.array([0.5, 1, 2])},
            "integers",
        ),
        (
            "string labels",
            {"intensitys": intensity, "labels230": np.array(["P1", "P-1", "P2"])},
            "integers",
        ),
        (
            "wrong width (100 points)",
            {"intensitys": intensity[:, :100], "labels230": labels},
            "8500",
        ),
        ("1-D intensities", {"intensitys": intensity[0], "labels230": labels[:1]}, "8500"),
        ("label count differs", {"intensitys": intensity, "labels230": labels[:2]}, "labels for"),
        ("missing keys", {"patterns": intensity, "labels": labels}, "labels230"),
    ]
    for index, (name, content, fragment) in enumerate(bad):
        case(
            name, saved(f"bad_{index}.npy", content), "error", fragment=fragment, allow_pickle=True
        )
    case(
        "a plain array, not a dict",
        saved("array.npy", intensity, allow=False),
        "error",
        fragment="dict",
    )
    case("missing file", root / "absent.npy", "error", fragment="absent.npy")
    text = write_text(root / "text.npy", "10 1\n11 2\n")
    case(
        "a text file named .npy",
        text,
        "error",
        fragment=("not a NumPy", "not an .npy", "not a .npy", "format", "magic"),
        should="a clear error saying it is no .npy file (not that it holds pickled objects)",
    )
    case(
        "a text file named .npy, allow_pickle=True",
        text,
        "error",
        fragment=("not a NumPy", "not an .npy", "not a .npy", "format", "magic", "text.npy"),
    )
    full = np.lib.format
    buffer = io.BytesIO()
    full.write_array(buffer, intensity)
    truncated = write_bytes(root / "truncated.npy", buffer.getvalue()[:5000])
    case(
        "truncated .npy (plain array)",
        truncated,
        "error",
        fragment=("truncated", "not fully written"),
    )
    empty = write_bytes(root / "empty.npy", b"")
    case("empty .npy file", empty, "error", fragment=("empty", "empty.npy"))
    broken_npz = write_bytes(root / "broken.npz", npz.read_bytes()[:300])
    case("truncated .npz", broken_npz, "error", fragment=("broken.npz", "zip", "truncated"))
    case(
        "grid with 100 points for 8500-wide patterns",
        npz,
        "error",
        fragment="100",
        grid=TwoThetaGrid(num_points=100),
    )


# ----------------------------------------------------------------------------- SpaceGroupPredictor


def group_predict_input_values() -> None:
    entry = "predict_input_values"
    predictor, x, reference = FX.predictor, FX.clean_input, FX.clean_result

    case = case_of(entry, predictor.predict_input_values)

    same = same_prediction(reference, 1e-4)
    case("clean pattern [num_points]", x, "ok", check=same)
    case("batch [1, num_points]", x[None], "ok", check=same)
    case("0-100 scale", x * 100, "ok", check=same, should="the clean input's answer")
    case("counts scale (x 1e6)", x * 1e6, "ok", check=same)
    integers = torch.round(x * 1000).to(torch.int64)
    int_reference = predictor.predict_input_values(integers.double() / 1000)[0]
    case("int64 counts", integers, "ok", check=same_prediction(int_reference, 1e-4))
    case(
        "uint8 (0-255)",
        torch.round(x * 255).to(torch.uint8),
        "ok",
        check=same_prediction(reference, 0.05),
    )
    case("float16", x.half(), "ok", check=same_prediction(reference, 0.01))
    case("bfloat16", x.bfloat16(), "ok", check=same_prediction(reference, 0.02))
    case("numpy array", x.numpy(), "ok", check=same)
    case("python list", x.tolist(), "ok", check=same)
    case(
        "small negative noise (-1% of the maximum)",
        x - 0.01,
        "ok",
        check=same_prediction(reference, 0.05),
    )
    case("non-contiguous batch (transposed view)", torch.stack([x, x], 1).T, "ok", check=same)
    zero = torch.zeros_like(x)
    case("all zero", zero, "error", fragment="all zero")
    case(
        "all-zero second row of a batch",
        torch.stack([x, zero]),
        "error",
        fragment=("pattern 1", "all zero"),
    )
    case("all negative", -x, "error", fragment="no positive")
    case("sign-flipped with a small positive offset", 0.01 - x, "error", fragment="outweighs")
    case(
        "NaN value",
        torch.where(torch.arange(len(x)) == 5, torch.tensor(float("nan")), x),
        "error",
        fragment="non-finite",
    )
    case("one point too many", torch.cat([x, x[:1]]), "error", fragment=str(len(x) + 1))
    case("8500 points for a 64-point model", torch.rand(8500), "error", fragment="8500")
    case("3-D [1, 1, num_points]", x[None, None], "error", fragment="shape")
    case("scalar tensor", torch.tensor(1.0), "error", fragment="shape")
    case("empty batch [0, num_points]", x[None][:0], "error", fragment="empty")
    case("complex", x.to(torch.complex64), "error", fragment="real")
    case("a string", "pattern.xy", "error", fragment="input_values")
    case("None", None, "error", fragment="input_values")
    case(
        "ragged list of lists",
        [x.tolist(), x.tolist()[:10]],
        "error",
        fragment=("input_values", "shape", "length"),
    )
    case("top_k=0", x, "error", fragment="top_k", top_k=0)
    case("top_k=None", x, "error", fragment="top_k", top_k=None)
    case(
        "top_k=1000 (clamped to 230)",
        x,
        "ok",
        check=lambda r, c: (
            None if len(r[0].candidates) == 230 else f"{len(r[0].candidates)} candidates"
        ),
        top_k=1000,
    )
    case("min_confidence=1.5", x, "error", fragment="min_confidence", min_confidence=1.5)
    case("min_confidence=-0.1", x, "error", fragment="min_confidence", min_confidence=-0.1)
    case(
        "min_confidence='0.5' (a string)",
        x,
        "error",
        fragment="min_confidence",
        min_confidence="0.5",
    )
    case(
        "min_confidence=1.0 (always uncertain)",
        x,
        "ok",
        check=lambda r, c: None if r[0].uncertain else "not marked uncertain",
        min_confidence=1.0,
    )
    case(
        "sources of the wrong length",
        torch.stack([x, x]),
        "error",
        fragment="sources",
        sources=["a"],
    )


def group_predict_arrays() -> None:
    entry = "SpaceGroupPredictor.predict"
    predictor = FX.predictor
    tt, inten = profile(CU, 5.0, 90.0, 0.02)
    reference = predictor.predict(tt, inten)[0]

    def case(name, two_theta, intensity, expect, fragment=None, check=None, should=None, **kwargs):
        run_case(
            entry,
            name,
            lambda: predictor.predict(two_theta, intensity, **kwargs),
            expect=expect,
            fragment=fragment,
            check=check,
            should=should,
        )

    same = same_prediction(reference, 0.01)
    case(
        "clean Cu pattern, wavelength=None (model's)",
        tt,
        inten,
        "ok",
        check=same_prediction(reference, 1e-6),
    )
    case(
        "wavelength=1.54056 given",
        tt,
        inten,
        "ok",
        check=same_prediction(reference, 1e-6),
        wavelength=CU,
    )
    tt_co, in_co = profile(CO, 5.0, 115.0, 0.02)
    case(
        "Co pattern with wavelength=1.78897",
        tt_co,
        in_co,
        "ok",
        check=same,
        should="the Cu pattern's answer",
        wavelength=CO,
    )
    tt_mo, in_mo = profile(MO, 2.0, 40.0, 0.01)
    case(
        "Mo pattern with wavelength=0.7093",
        tt_mo,
        in_mo,
        "ok",
        check=same,
        should="the Cu pattern's answer",
        wavelength=MO,
    )
    case(
        "per-pattern wavelengths [Cu, Co]",
        [tt, tt_co],
        [inten, in_co],
        "ok",
        check=lambda r, c: same(r[0], c) or same(r[1], c),
        wavelength=[CU, CO],
    )
    case("descending 2θ", tt[::-1], inten[::-1], "ok", check=same_prediction(reference, 1e-6))
    case("python lists", tt.tolist(), inten.tolist(), "ok", check=same_prediction(reference, 1e-6))
    case("integer intensities", tt, np.round(inten).astype(np.int64), "ok", check=same)
    case(
        "wavelength='1.54056' (a string)",
        tt,
        inten,
        "ok",
        check=same_prediction(reference, 1e-6),
        wavelength="1.54056",
    )
    case(
        "0.5 s/step counts (x 1e5 scale)",
        tt,
        inten * 1e5,
        "ok",
        check=same_prediction(reference, 1e-5),
    )
    case(
        "coarse 0.5° steps",
        tt[::25],
        inten[::25],
        "ok",
        should="an answer (coarse but covering the grid)",
    )
    case(
        "batch of two of different lengths",
        [tt, tt[::2]],
        [inten, inten[::2]],
        "ok",
        check=lambda r, c: None if len(r) == 2 else f"{len(r)} results",
    )
    case(
        "2-D arrays [2, L]",
        np.stack([tt, tt]),
        np.stack([inten, inten]),
        "ok",
        check=lambda r, c: None if len(r) == 2 else f"{len(r)} results",
    )
    # refusals
    case("lengths differ", tt, inten[:-1], "error", fragment="points")
    case("one point", tt[:1], inten[:1], "error", fragment="at least 2")
    case(
        "empty arrays", tt[:0], inten[:0], "error", fragment=("at least 2", "empty", "no patterns")
    )
    case("NaN in 2θ", np.where(np.arange(len(tt)) == 3, np.nan, tt), inten, "error", fragment="NaN")
    shuffled = tt.copy()
    shuffled[[10, 11]] = shuffled[[11, 10]]
    case("two 2θ values swapped", shuffled, inten, "error", fragment="strictly increasing")
    case(
        "repeated 2θ",
        np.repeat(tt[::2], 2),
        np.repeat(inten[::2], 2),
        "error",
        fragment="strictly increasing",
    )
    case("2θ in radians", np.radians(tt), inten, "error", fragment="covers")
    case("only 5-30° measured", tt[tt < 30], inten[tt < 30], "error", fragment="covers")
    case(
        "2θ including 0",
        np.concatenate([[0.0], tt]),
        np.concatenate([[1.0], inten]),
        "error",
        fragment="(0, 180)",
    )
    case("all-zero intensity", tt, np.zeros_like(inten), "error", fragment="positive")
    case("all-negative intensity", tt, -inten, "error", fragment="positive")
    for name, value, fragment in [
        ("wavelength=0", 0.0, "wavelength"),
        ("wavelength=-1.54", -1.54, "wavelength"),
        ("wavelength=nan", float("nan"), "wavelength"),
        ("wavelength=0.154 (nm by mistake)", 0.154, "0.154"),
        ("wavelength=154.06 (pm by mistake)", 154.06, "154.06"),
        ("wavelength='Cu' (an anode name)", "Cu", ("wavelength", "Cu")),
        ("three wavelengths for two patterns", [CU, CO, MO], "wavelength"),
    ]:
        x, y = ([tt, tt_co], [inten, in_co]) if name.startswith("three") else (tt, inten)
        case(name, x, y, "error", fragment=fragment, wavelength=value)
    case("two_theta=None", None, inten, "error", fragment="two_theta")
    case("two_theta a dict", {"a": 1}, inten, "error", fragment="two_theta")
    case("3-D array", tt[None, None], inten[None, None], "error", fragment="two_theta")
    case(
        "one 2θ array, two intensity arrays",
        tt,
        [inten, inten],
        "error",
        fragment=("batches", "pattern"),
    )
    case("top_k=0", tt, inten, "error", fragment="top_k", top_k=0)
    case("min_confidence=2", tt, inten, "error", fragment="min_confidence", min_confidence=2)


def group_predict_file() -> None:
    entry = "predict_file"
    predictor = FX.predictor
    root = folder("predict_files")
    tt, inten = profile(CU, 5.0, 90.0, 0.02)
    clean = write_text(root / "clean.xy", xy_text(tt, inten))
    reference = predictor.predict(tt, inten)[0]
    tt_co, in_co = profile(CO, 5.0, 115.0, 0.02)
    tt_mo, in_mo = profile(MO, 2.0, 40.0, 0.01)

    case = case_of(
        entry,
        predictor.predict_file,
        protect=lambda path: [path, FX.model] if Path(path).exists() else [FX.model],
    )

    def used(value, note):
        def check(result, ctx):
            if result.wavelength is None or abs(result.wavelength - value) > 1e-4:
                return f"wavelength {result.wavelength} used, expected {value:g}"
            if note is not None and (
                result.wavelength_note is None or note not in result.wavelength_note
            ):
                return (
                    f"misleading: wavelength note {result.wavelength_note!r} does not say {note!r}"
                )
            if note is None and result.wavelength_note is not None:
                return (
                    f"misleading: note {result.wavelength_note!r} although "
                    "the caller gave the wavelength"
                )
            return None

        return check

    same = same_prediction(reference, 0.01)
    case(
        "clean .xy without a wavelength",
        clean,
        "ok",
        check=all_of(same_prediction(reference, 1e-5), used(CU, "not stated")),
    )
    co = write_text(root / "co_header.xy", xy_text(tt_co, in_co, header="# Anode Co"))
    case(
        "Co pattern, header 'Anode Co'",
        co,
        "ok",
        check=all_of(same, used(CO, "stated")),
        should="Co used, said so; the Cu answer",
    )
    mo = write_text(root / "mo_header.xy", xy_text(tt_mo, in_mo, header="# Wavelength: 0.7093 Å"))
    case(
        "Mo pattern, header 'Wavelength: 0.7093 Å'",
        mo,
        "ok",
        check=all_of(same, used(0.7093, "stated")),
    )
    co_plain = write_text(root / "co_plain.xy", xy_text(tt_co, in_co))
    case(
        "Co pattern without header, wavelength=1.78897",
        co_plain,
        "ok",
        check=all_of(same, used(CO, None)),
        wavelength=CO,
    )
    case(
        "Co pattern without header or wavelength",
        co_plain,
        "ok",
        check=used(CU, "not stated"),
        should="answers at the model's wavelength and says it was not stated",
    )
    mo_plain = write_text(root / "mo_plain.xy", xy_text(tt_mo, in_mo))
    case(
        "Mo pattern without header or wavelength",
        mo_plain,
        "error",
        fragment=("covers", "wavelength"),
        should="refused: covers too little at Cu (with the range), naming the wavelength",
    )
    ambiguous = write_text(root / "ambiguous.xy", xy_text(tt, inten, header="# Wavelength: 0.154"))
    case("ambiguous header", ambiguous, "error", fragment="ambiguous")
    case(
        "ambiguous header, wavelength=1.54056",
        ambiguous,
        "ok",
        check=all_of(same_prediction(reference, 1e-5), used(CU, None)),
        wavelength=CU,
    )
    upper = write_text(root / "UPPER.XY", xy_text(tt, inten))
    case("upper-case suffix .XY", upper, "ok", check=same_prediction(reference, 1e-5))
    nosuffix = write_text(root / "scan", xy_text(tt, inten))
    case("no suffix", nosuffix, "ok", check=same_prediction(reference, 1e-5))
    gz = write_bytes(root / "scan.xy.gz", gzip.compress(xy_text(tt, inten).encode(), mtime=0))
    case("gzip-compressed .xy.gz", gz, "ok", check=same_prediction(reference, 1e-5))
    csv = write_text(
        root / "scan.csv",
        "2theta,counts\n" + "".join(f"{t:.3f},{i:.2f}\n" for t, i in zip(tt, inten, strict=True)),
    )
    case(".csv with a header row", csv, "ok", check=same_prediction(reference, 1e-5))
    single = write_text(root / "single.xy", "30 100\n")
    case("a single data line", single, "error", fragment="at least 2")
    radians = write_text(root / "radians.xy", xy_text(np.radians(tt), inten, fmt="{:.5f} {:.2f}"))
    case("2θ in radians", radians, "error", fragment="covers")
    partial = write_text(root / "partial.xy", xy_text(tt[tt < 30], inten[tt < 30]))
    case("only 5-30° measured", partial, "error", fragment="covers")
    zero = write_text(root / "zero.xy", xy_text(tt, np.zeros_like(inten)))
    case("all-zero intensities", zero, "error", fragment="positive")
    case("wavelength=0", clean, "error", fragment="wavelength", wavelength=0.0)
    case("min_confidence=2", clean, "error", fragment="min_confidence", min_confidence=2.0)
    case("top_k=0", clean, "error", fragment="top_k", top_k=0)
    case("missing .xy", root / "absent.xy", "error", fragment="absent.xy")
    # CIFs
    cif_reference = FX.clean_result
    case("NaCl CIF", NACL, "ok", check=same_prediction(cif_reference, 1e-5))
    upper_cif = root / "NACL.CIF"
    shutil.copy(NACL, upper_cif)
    case("upper-case .CIF", upper_cif, "ok", check=same_prediction(cif_reference, 1e-5))
    mcif = root / "nacl.mcif"
    shutil.copy(NACL, mcif)
    case(".mcif", mcif, "ok", check=same_prediction(cif_reference, 1e-5))
    empty_cif = write_text(root / "empty.cif", "")
    case("empty CIF", empty_cif, "error", fragment="empty")
    case("missing CIF", root / "absent.cif", "error", fragment="absent.cif")
    xy_as_cif = write_text(root / "pattern.cif", xy_text(tt[:50], inten[:50]))
    case("a pattern named .cif", xy_as_cif, "error", fragment=("data block", "CIF"))
    tiny_cell = write_text(
        root / "tiny_cell.cif",
        cif(
            "tiny",
            "".join(f"_cell_length_{a} 0.9\n" for a in "abc")
            + "".join(f"_cell_angle_{a} 90\n" for a in ("alpha", "beta", "gamma")),
            SITES_HEADER + "H1 H 0 0 0 1\n",
        ),
    )
    case(
        "structure without reflections in 5-90° (a = 0.9 Å)",
        tiny_cell,
        "error",
        fragment="no reflection",
    )
    case(
        "CIF with wavelength=1.78897 (ignored for CIFs?)",
        NACL,
        "ok",
        check=same_prediction(cif_reference, 1e-5),
        wavelength=CO,
        should="the CIF's clean pattern (the wavelength has no meaning for a CIF)",
    )
    case("a directory", root, "error", fragment=("directory", "predict_files", "not found"))


def group_from_pretrained() -> None:
    from physmoe import ResNet1D_MoE
    from physmoe.inference import SpaceGroupPredictor

    def broken(name, edit):
        path = copy_model(name)
        edit(path)
        return path

    def rewrite_config(**changes):
        def edit(path):
            config = json.loads((path / "config.json").read_text())
            config.update(changes)
            (path / "config.json").write_text(json.dumps(config))

        return edit

    def truncate(name, size):
        def edit(path):
            data = (path / name).read_bytes()
            (path / name).write_bytes(data[:size] if size >= 0 else data[: len(data) + size])

        return edit

    variants = [
        ("missing folder", TMP / "models" / "absent", "error", ("no such checkpoint", "absent")),
        ("empty folder", folder("models", "empty"), "error", ("config.json", "no file named")),
        (
            "config.json only (no weights)",
            broken("no_weights", lambda p: (p / "model.safetensors").unlink()),
            "error",
            "model.safetensors",
        ),
        (
            "weights only (no config.json)",
            broken("no_config", lambda p: (p / "config.json").unlink()),
            "error",
            "config.json",
        ),
        (
            "truncated model.safetensors",
            broken("truncated", truncate("model.safetensors", -500)),
            "error",
            ("safetensors", "truncated"),
        ),
        (
            "empty model.safetensors",
            broken("empty_weights", truncate("model.safetensors", 0)),
            "error",
            "safetensors",
        ),
        (
            "config.json not JSON",
            broken("bad_json", lambda p: (p / "config.json").write_text("{not json")),
            "error",
            ("config.json", "JSON"),
        ),
        (
            "config.json a JSON list",
            broken("list_json", lambda p: (p / "config.json").write_text("[1, 2]")),
            "error",
            ("config.json", "JSON", "dict", "object"),
        ),
        (
            "config num_experts 0",
            broken("experts0", rewrite_config(num_experts=0)),
            "error",
            "num_experts",
        ),
        (
            "config num_experts 2 (weights have 4)",
            broken("experts2", rewrite_config(num_experts=2, tail_expert_ids=[1])),
            "error",
            ("num_experts", "size mismatch", "shape", "expert"),
        ),
        (
            "config hidden_sizes changed (weights differ)",
            broken("hidden", rewrite_config(hidden_sizes=[4, 8, 8, 8, 8, 16], feature_dim=16)),
            "error",
            ("size mismatch", "shape", "hidden"),
        ),
        (
            "config label_space_groups repeated",
            broken("labels_repeated", rewrite_config(label_space_groups=[1] * 230)),
            "error",
            "repeats",
        ),
        (
            "config label_space_groups too short",
            broken("labels_short", rewrite_config(label_space_groups=list(range(1, 11)))),
            "error",
            ("label_space_groups", "230", "labels"),
        ),
        (
            "config hierarchical_inference 'bogus'",
            broken("hier", rewrite_config(hierarchical_inference="bogus")),
            "error",
            "hierarchical_inference",
        ),
        (
            "config wavelength null",
            broken("wl_null", rewrite_config(wavelength=None)),
            "error",
            "wavelength",
        ),
        ("a file instead of a folder", NACL, "error", ("is a file", "folder")),
        (
            "Hub-like id 'someone/no-such-model' (offline)",
            "someone/no-such-model",
            "error",
            ("offline", "no such checkpoint"),
        ),
        (
            "invalid id 'not a model id!'",
            "not a model id!",
            "error",
            ("no such checkpoint", "not a model id!"),
        ),
    ]
    loaders = {
        "ResNet1D_MoE.from_pretrained": ResNet1D_MoE.from_pretrained,
        "SpaceGroupPredictor.from_pretrained": SpaceGroupPredictor.from_pretrained,
    }
    for name, path, expect, fragment in variants:
        protect = [path] if isinstance(path, Path) and path.exists() else []
        for loader, load in loaders.items():
            run_case(
                loader,
                name,
                lambda path=path, load=load: load(path),
                expect=expect,
                fragment=fragment,
                protect=protect,
            )
    good = copy_model("good")
    bert = broken("bert", rewrite_config(model_type="bert"))
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "config model_type 'bert' (fields intact)",
        lambda: SpaceGroupPredictor.from_pretrained(bert).predict_input_values(FX.clean_input)[0],
        expect="ok",
        check=same_prediction(FX.clean_result, 1e-5),
        protect=[bert],
        should="the same model (transformers warns about the model type), or a clear error",
    )
    run_case(
        "ResNet1D_MoE.from_pretrained",
        "override num_experts=0",
        lambda: ResNet1D_MoE.from_pretrained(good, num_experts=0),
        expect="error",
        fragment="num_experts",
        protect=[good],
    )
    run_case(
        "ResNet1D_MoE.from_pretrained",
        "override tau=-1",
        lambda: ResNet1D_MoE.from_pretrained(good, tau=-1.0),
        expect="error",
        fragment="tau",
        protect=[good],
    )
    run_case(
        "ResNet1D_MoE.from_pretrained",
        "unknown override 'tua'",
        lambda: ResNet1D_MoE.from_pretrained(good, tua=1.0),
        expect="ok",
        check=lambda r, c: None if "tua" in c.logs else "no warning naming 'tua'",
        should="a warning naming 'tua' (did you mean 'tau'?): transformers configs take extra keys",
    )
    no_pre = broken("no_preprocessor", lambda p: (p / "preprocessor_config.json").unlink())
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "no preprocessor_config.json (model grid used)",
        lambda: SpaceGroupPredictor.from_pretrained(no_pre).predict_input_values(FX.clean_input)[0],
        expect="ok",
        check=same_prediction(FX.clean_result, 1e-5),
        protect=[no_pre],
    )

    bad_pre = broken(
        "bad_preprocessor", lambda p: (p / "preprocessor_config.json").write_text("{oops")
    )
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "corrupt preprocessor_config.json",
        lambda: SpaceGroupPredictor.from_pretrained(bad_pre).predict_input_values(FX.clean_input)[
            0
        ],
        expect="error",
        fragment="preprocessor_config.json",
        protect=[bad_pre],
        should=(
            "a clear error, or the model grid with a warning that the "
            "file is invalid (not 'missing')"
        ),
    )

    def other_grid(path):
        config = json.loads((path / "preprocessor_config.json").read_text())
        config["num_points"] = 128
        (path / "preprocessor_config.json").write_text(json.dumps(config))

    grid = broken("preprocessor_grid", other_grid)
    tt, inten = profile(CU, 5.0, 90.0, 0.05)
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "preprocessor grid (128 points) differs from the model's (64)",
        lambda: SpaceGroupPredictor.from_pretrained(grid).predict(tt, inten),
        expect="error",
        fragment="preprocessor",
        protect=[grid],
        should="refused at loading: the preprocessor's grid does not match the model's",
    )
    for name, device, fragment in [
        ("device='cuda' without CUDA", "cuda", "CUDA"),
        ("device='tpu'", "tpu", "tpu"),
        ("device=3", 3, ("CUDA", "3")),
    ]:
        if torch.cuda.is_available():
            continue
        run_case(
            "SpaceGroupPredictor.from_pretrained",
            name,
            lambda device=device: SpaceGroupPredictor.from_pretrained(good, device=device),
            expect="error",
            fragment=fragment,
            protect=[good],
        )
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "device='cpu'",
        lambda: SpaceGroupPredictor.from_pretrained(good, device="cpu").predict_input_values(
            FX.clean_input
        )[0],
        expect="ok",
        check=same_prediction(FX.clean_result, 1e-5),
        protect=[good],
    )
    run_case(
        "SpaceGroupPredictor.from_pretrained",
        "temperature=0",
        lambda: SpaceGroupPredictor.from_pretrained(good, temperature=0.0),
        expect="error",
        fragment="temperature",
        protect=[good],
    )


# ------------------------------------------------------------------------------- ResNet1DMoEConfig


def group_config() -> None:
    from physmoe import ResNet1DMoEConfig
    from tiny_models import TINY

    entry = "ResNet1DMoEConfig"

    def case(name, expect, fragment=None, check=None, should=None, **fields):
        run_case(
            entry,
            name,
            lambda: ResNet1DMoEConfig(**{**TINY, **fields}),
            expect=expect,
            fragment=fragment,
            check=check,
            should=should,
        )

    bad = [
        ("num_points", 1),
        ("num_points", "64"),
        ("num_points", 8),
        ("two_theta_min", 95.0),
        ("two_theta_max", 200.0),
        ("wavelength", 0.0),
        ("wavelength", "1.54"),
        ("hidden_sizes", []),
        ("hidden_sizes", [4.5, 8, 8, 8, 8, 8]),
        ("pool_types", ["max", "bogus", "avg", "avg", "avg", "avg"]),
        ("pool_paddings", [0, 0, 2, 0, 0, 0]),
        ("dropout_blocks", [99]),
        ("hidden_dropout_prob", 1.0),
        ("negative_slope", -1.0),
        ("stem_stride", 2),
        ("stem_kernel_size", 4),
        ("feature_dim", 16),
        ("num_experts", 0),
        ("num_experts", "4"),
        ("tail_expert_ids", [10]),
        ("tail_expert_ids", [1, 1]),
        ("expert_mode", "bogus"),
        ("projection_dim", 0),
        ("logit_scale", -1.0),
        ("rule_bias_init", [[0.0] * 4] * 3),
        ("hierarchical_inference", "bogus"),
        ("label_space_groups", [0] + list(range(2, 231))),
        ("label_space_groups", [1] * 230),
        ("loss_preset", "bogus"),
        ("rule_matrix", "bogus"),
        ("lambda_dol", float("nan")),
        ("tau", -1.0),
        ("contrastive_temperature", 0.0),
        ("detach_ensemble", "yes"),
        ("hnm_momentum", 2.0),
        ("hnm_k", 0),
        ("num_labels", 1),
        ("class_prior", [0.0] * 230),
        ("calibration_temperature", float("nan")),
    ]
    for field_name, value in bad:
        fragment = field_name.split("_")[0] if field_name in ("feature_dim",) else field_name
        if field_name == "num_points" and value == 8:
            fragment = ("pools", "num_points", "length")
        if field_name in ("stem_stride",):
            fragment = ("stem", "stride")
        if field_name == "feature_dim":
            fragment = "feature_dim"
        case(f"{field_name}={value!r}", "error", fragment=fragment, **{field_name: value})
    case(
        "expert_tau_min 2 > expert_tau_max 1",
        "error",
        fragment="expert_tau",
        expert_tau_min=2.0,
        expert_tau_max=1.0,
    )
    case(
        "class_prior of 5 values for 230 labels",
        "error",
        fragment="class_prior",
        class_prior=[1.0] * 5,
        should=(
            "a clear error from the config (today only the model constructor says 'class_prior has "
            "5 entries, num_labels is 230')"
        ),
    )
    case(
        "label_space_groups of 10 for 230 labels",
        "error",
        fragment="label_space_groups",
        label_space_groups=list(range(1, 11)),
        should=(
            "a clear error from the config (today only the model constructor / "
            "space_group_numbers refuse it)"
        ),
    )
    case(
        "num_labels=10 without label_space_groups",
        "ok",
        should="accepted (labels unknown; a predictor refuses it)",
        num_labels=10,
        hierarchical_inference="none",
        loss_preset="cross_entropy",
    )
    case(
        "unknown field 'tua' (typo of tau)",
        "ok",
        tua=1.0,
        check=lambda r, c: None if "tua" in c.logs else "no warning naming 'tua'",
        should="a warning naming 'tua' (did you mean 'tau'?): transformers configs take extra keys",
    )
    case(
        "tiny config", "ok", check=lambda r, c: None if r.num_points == 64 else "num_points changed"
    )
    case("ints where floats are expected (two_theta_max=90)", "ok", two_theta_max=90, wavelength=2)
    run_case(
        entry,
        "from_preset('bogus')",
        lambda: ResNet1DMoEConfig.from_preset("bogus"),
        expect="error",
        fragment="bogus",
    )
    run_case(
        entry,
        "from_preset('small', num_points=4)",
        lambda: ResNet1DMoEConfig.from_preset("small", num_points=4),
        expect="error",
        fragment=("pools", "num_points"),
    )
    run_case(
        entry, "from_preset('small')", lambda: ResNet1DMoEConfig.from_preset("small"), expect="ok"
    )
    run_case(
        entry,
        "from_dict with num_experts=0",
        lambda: ResNet1DMoEConfig.from_dict({**TINY, "num_experts": 0}),
        expect="error",
        fragment="num_experts",
    )


# ---------------------------------------------------------------------------------------- losses


def group_losses() -> None:
    from physmoe import ResNet1DMoEConfig
    from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map
    from physmoe.loss import (
        CenterRegularizationLoss,
        HardNegativeMining_Proto,
        HierarchicalLoss,
        ICLMoELoss,
        PhysicsContrastiveLoss,
        build_loss,
        log_class_prior,
        soft_entropy,
    )
    from tiny_models import TINY, tiny_model

    torch.manual_seed(0)
    rule = torch.as_tensor(np.asarray(rule_similarity_matrix()), dtype=torch.float32)
    sys_map = torch.as_tensor(np.asarray(sg_to_sys_map()), dtype=torch.int64)
    config = ResNet1DMoEConfig(**TINY)
    batch, experts, classes, dim = 6, config.num_experts, 230, config.feat_dim
    features = torch.randn(batch, dim)
    labels = torch.tensor([0, 13, 61, 224, 13, 0])
    outputs = {
        "features": features,
        "sys_logits": torch.randn(batch, 7),
        "expert_logits": torch.randn(batch, experts, classes),
        "gating_weights": torch.softmax(torch.randn(batch, experts), 1),
    }

    def finite(r, c):
        tensors = [t for t in (r if isinstance(r, tuple) else (r,)) if isinstance(t, torch.Tensor)]
        return None if all(torch.isfinite(t).all() for t in tensors) else "non-finite loss"

    def lossy(entry, name, fn, expect="error", fragment=None, check=None, should=None):
        run_case(entry, name, fn, expect=expect, fragment=fragment, check=check, should=should)

    def with_labels(entry, call, count):
        """``call(labels)``: finite for the valid batch, a clear error for the first ``count``
        bad labels."""
        lossy(entry, "valid batch", lambda: call(labels), "ok", check=finite)
        for name, bad, fragment in bad_labels[:count]:
            lossy(entry, name, lambda bad=bad: call(bad), fragment=fragment)

    bad_labels = [
        ("label 230 (out of range)", torch.tensor([0, 13, 61, 230, 13, 0]), ("230", "0..229")),
        ("label -1", torch.tensor([0, 13, 61, -1, 13, 0]), ("-1", "0..229")),
        ("float labels", labels.float(), ("integer", "dtype")),
        ("bool labels", labels.bool(), ("integer", "dtype")),
        ("labels [B, 1]", labels[:, None], ("shape", "[batch]")),
        ("labels a python list", labels.tolist(), ("Tensor", "labels")),
        ("labels of another batch size", labels[:4], ("batch", "shape")),
        ("empty labels", labels[:0], ("empty", "batch")),
    ]
    contrastive = PhysicsContrastiveLoss()
    lossy(
        "PhysicsContrastiveLoss",
        "valid batch",
        lambda: contrastive(features, labels, rule),
        "ok",
        check=finite,
    )
    lossy(
        "PhysicsContrastiveLoss",
        "one-sample batch",
        lambda: contrastive(features[:1], labels[:1], rule),
        "ok",
        check=finite,
    )
    for name, bad, fragment in bad_labels:
        lossy(
            "PhysicsContrastiveLoss",
            name,
            lambda bad=bad: contrastive(features, bad, rule),
            fragment=fragment,
        )
    lossy(
        "PhysicsContrastiveLoss",
        "features 3-D",
        lambda: contrastive(features[:, None], labels, rule),
        fragment="features",
    )
    lossy(
        "PhysicsContrastiveLoss",
        "integer features",
        lambda: contrastive(features.long(), labels, rule),
        fragment=("features", "float"),
    )
    lossy(
        "PhysicsContrastiveLoss",
        "rule_matrix a numpy array",
        lambda: contrastive(features, labels, rule.numpy()),
        fragment=("rule_matrix", "Tensor"),
    )
    lossy(
        "PhysicsContrastiveLoss",
        "rule_matrix [230, 229]",
        lambda: contrastive(features, labels, rule[:, :229]),
        fragment="rule_matrix",
    )
    lossy(
        "PhysicsContrastiveLoss",
        "temperature=0",
        lambda: PhysicsContrastiveLoss(temperature=0.0),
        fragment="temperature",
    )

    hierarchical = HierarchicalLoss(sys_map)
    with_labels(
        "HierarchicalLoss",
        lambda y: hierarchical(outputs["sys_logits"], outputs["expert_logits"][:, 0], y),
        4,
    )
    lossy(
        "HierarchicalLoss",
        "sys_logits [B, 6]",
        lambda: hierarchical(outputs["sys_logits"][:, :6], outputs["expert_logits"][:, 0], labels),
        fragment="sys_logits",
    )
    lossy(
        "HierarchicalLoss",
        "sg_to_sys_map with 7",
        lambda: HierarchicalLoss(torch.full((230,), 7)),
        fragment="sg_to_sys_map",
    )
    lossy(
        "HierarchicalLoss",
        "sg_to_sys_map float",
        lambda: HierarchicalLoss(sys_map.float()),
        fragment="sg_to_sys_map",
    )

    center = CenterRegularizationLoss(classes, dim, rule_matrix=rule)
    with_labels("CenterRegularizationLoss", lambda y: center(features, y), 4)
    lossy(
        "CenterRegularizationLoss",
        "features of another width",
        lambda: center(features[:, :3], labels),
        fragment="features",
    )

    icl = ICLMoELoss(experts, tail_expert_ids=[2, 3])
    with_labels(
        "ICLMoELoss", lambda y: icl(outputs["expert_logits"], outputs["gating_weights"], y), 3
    )
    lossy(
        "ICLMoELoss",
        "gating_weights [B, 3]",
        lambda: icl(outputs["expert_logits"], outputs["gating_weights"][:, :3], labels),
        fragment="gating_weights",
    )
    lossy(
        "ICLMoELoss",
        "3 experts' logits for 4 experts",
        lambda: icl(outputs["expert_logits"][:, :3], outputs["gating_weights"], labels),
        fragment="experts",
    )
    lossy(
        "ICLMoELoss",
        "tail_expert_ids [7] of 4",
        lambda: ICLMoELoss(4, tail_expert_ids=[7]),
        fragment="tail_expert_ids",
    )

    for preset in ("physmoe", "cross_entropy", "balanced_softmax", "balanced_experts"):
        prior = torch.ones(classes) if preset in ("balanced_softmax", "balanced_experts") else None
        loss = build_loss(preset, config, rule, sys_map, class_prior=prior)
        entry = f"build_loss('{preset}')"
        lossy(
            entry,
            "valid batch",
            lambda loss=loss: loss(outputs, {"labels": labels}),
            "ok",
            check=lambda r, c: finite(r[0], c),
        )
        lossy(
            entry,
            bad_labels[0][0],
            lambda loss=loss: loss(outputs, {"labels": bad_labels[0][1]}),
            fragment=bad_labels[0][2],
        )
        if preset != "physmoe":
            continue
        for name, bad, fragment in bad_labels[1:5]:
            lossy(
                entry,
                name,
                lambda loss=loss, bad=bad: loss(outputs, {"labels": bad}),
                fragment=fragment,
            )
        lossy(
            entry,
            "targets without 'labels'",
            lambda loss=loss: loss(outputs, {"label": labels}),
            fragment="labels",
        )
        missing = {k: v for k, v in outputs.items() if k != "expert_logits"}
        lossy(
            entry,
            "outputs without 'expert_logits'",
            lambda loss=loss, missing=missing: loss(missing, {"labels": labels}),
            fragment="expert_logits",
        )
        lossy(
            entry,
            "outputs a tuple",
            lambda loss=loss: loss(tuple(outputs.values()), {"labels": labels}),
            fragment="outputs",
        )
        wrong = {**outputs, "expert_logits": outputs["expert_logits"][:, :, :229]}
        lossy(
            entry,
            "expert_logits for 229 classes",
            lambda loss=loss, wrong=wrong: loss(wrong, {"labels": labels}),
            fragment="expert_logits",
        )
        integer = {**outputs, "expert_logits": outputs["expert_logits"].long()}
        lossy(
            entry,
            "integer expert_logits",
            lambda loss=loss, integer=integer: loss(integer, {"labels": labels}),
            fragment=("floating", "expert_logits"),
        )
    lossy(
        "build_loss",
        "unknown preset",
        lambda: build_loss("bogus", config, rule, sys_map),
        fragment="bogus",
    )
    lossy(
        "build_loss",
        "balanced_softmax without class_prior",
        lambda: build_loss("balanced_softmax", config, rule, sys_map),
        fragment="class_prior",
    )
    lossy(
        "build_loss",
        "tau=-1",
        lambda: build_loss("physmoe", config, rule, sys_map, tau=-1.0),
        fragment="tau",
    )
    lossy(
        "build_loss",
        "lambda_dol=nan",
        lambda: build_loss("physmoe", config, rule, sys_map, lambda_dol=float("nan")),
        fragment="lambda_dol",
    )
    lossy(
        "build_loss",
        "every weight 0",
        lambda: build_loss(
            "physmoe",
            config,
            rule,
            sys_map,
            lambda_scl=0.0,
            lambda_dol=0.0,
            lambda_col=0.0,
            lambda_hier=0.0,
            lambda_reg=0.0,
        )(outputs, {"labels": labels}),
        fragment="weight",
    )
    lossy(
        "build_loss",
        "rule_matrix with values > 1",
        lambda: build_loss("physmoe", config, rule * 2, sys_map),
        fragment="rule_matrix",
    )
    lossy(
        "build_loss",
        "rule_matrix [10, 10] and sg_to_sys_map [230]",
        lambda: build_loss("physmoe", config, rule[:10, :10], sys_map),
        fragment="sg_to_sys_map",
    )
    lossy(
        "build_loss",
        "class_prior of 5 values",
        lambda: build_loss("balanced_softmax", config, rule, sys_map, class_prior=torch.ones(5)),
        fragment="class_prior",
    )
    lossy(
        "build_loss",
        "cfg without num_experts",
        lambda: build_loss("physmoe", object(), rule, sys_map),
        fragment="num_experts",
    )
    lossy(
        "soft_entropy",
        "hard target 230",
        lambda: soft_entropy(outputs["expert_logits"][:, 0], torch.tensor([0, 1, 2, 230, 4, 5])),
        fragment=("230", "target"),
    )
    lossy(
        "soft_entropy",
        "hard target -1",
        lambda: soft_entropy(outputs["expert_logits"][:, 0], torch.tensor([0, 1, 2, -1, 4, 5])),
        fragment=("-1", "target"),
    )
    lossy(
        "soft_entropy",
        "soft target of another shape",
        lambda: soft_entropy(outputs["expert_logits"][:, 0], torch.rand(6, 229)),
        fragment="target",
    )
    lossy(
        "log_class_prior",
        "5 values for 230 classes",
        lambda: log_class_prior(torch.ones(5), 230),
        fragment="class_prior",
    )
    lossy(
        "log_class_prior",
        "negative counts",
        lambda: log_class_prior(-torch.ones(230), 230),
        fragment="class_prior",
    )
    miner = HardNegativeMining_Proto(classes, dim)
    lossy(
        "HardNegativeMining_Proto",
        "compute_contrastive_loss label 230",
        lambda: miner.compute_contrastive_loss(features, torch.tensor([0, 1, 2, 230, 4, 5])),
        fragment=("230", "0..229", "labels"),
    )
    lossy(
        "HardNegativeMining_Proto",
        "update_prototypes label -1",
        lambda: miner.update_prototypes(features, torch.tensor([0, 1, 2, -1, 4, 5])),
        fragment=("-1", "labels"),
    )
    lossy(
        "HardNegativeMining_Proto",
        "features of another width",
        lambda: miner.compute_contrastive_loss(features[:, :3], labels),
        fragment="feat",
    )
    model = tiny_model(seed=0)
    x = torch.rand(batch, 64)
    lossy(
        "ResNet1D_MoE.forward",
        "valid labels",
        lambda: model(x, labels=labels).loss,
        "ok",
        check=finite,
    )
    for name, bad, fragment in bad_labels[:5]:
        lossy("ResNet1D_MoE.forward", name, lambda bad=bad: model(x, labels=bad), fragment=fragment)
    lossy(
        "ResNet1D_MoE.forward",
        "input of 65 points",
        lambda: model(torch.rand(batch, 65)),
        fragment="65",
    )
    lossy(
        "ResNet1D_MoE.forward",
        "NaN input",
        lambda: model(torch.full((batch, 64), float("nan"))),
        fragment="NaN",
    )
    lossy(
        "ResNet1D_MoE.forward",
        "numpy input",
        lambda: model(np.random.default_rng(0).random((batch, 64))),
        fragment="Tensor",
    )


# ------------------------------------------------------------------------------------- collator


def group_collator() -> None:
    from physmoe.data import MeasurementConditions

    entry = "PXRDCollator"
    grid = TwoThetaGrid(num_points=64)
    peaks = nacl_peaks()
    row = {"peak_two_theta": peaks.two_theta.tolist(), "peak_intensity": peaks.intensity.tolist()}

    def rows(*labels, key="labels", **extra):
        return [{**row, key: label, **extra} for label in labels]

    def case(name, fn, expect, fragment=None, check=None, should=None):
        run_case(entry, name, fn, expect=expect, fragment=fragment, check=check, should=should)

    collate = PXRDCollator(grid, train=False)
    train = PXRDCollator(grid, train=True, seed=0)

    def labels_are(expected):
        return lambda r, c: (
            None
            if r["labels"].tolist() == expected
            else f"labels {r['labels'].tolist()}, expected {expected}"
        )

    case("0-based labels", lambda: collate(rows(0, 13, 229)), "ok", check=labels_are([0, 13, 229]))
    case(
        "0-based 'space_group' column",
        lambda: collate(rows(0, 224, key="space_group")),
        "ok",
        check=labels_are([0, 224]),
    )
    case("float labels 3.0", lambda: collate(rows(3.0)), "ok", check=labels_are([3]))
    case(
        "no labels (inference)",
        lambda: collate([row, row]),
        "ok",
        check=lambda r, c: None if "labels" not in r else "labels made up",
    )
    case(
        "training (random conditions)",
        lambda: train(rows(1, 2)),
        "ok",
        check=lambda r, c: (
            None
            if torch.isfinite(r["input_values"]).all() and r["input_values"].shape == (2, 64)
            else "bad batch"
        ),
    )
    case(
        "stored input_values rows",
        lambda: collate([{"input_values": np.random.default_rng(0).random(64), "labels": 1}]),
        "ok",
        check=labels_are([1]),
    )
    case(
        "1-based 'space_group' 230",
        lambda: collate(rows(1, 230, key="space_group")),
        "error",
        fragment="1-based",
    )
    case("label 230 under 'labels'", lambda: collate(rows(230)), "error", fragment="230")
    case("label -1", lambda: collate(rows(-1)), "error", fragment="-1")
    case("label 3.5", lambda: collate(rows(3.5)), "error", fragment="3.5")
    case("label '14' (a string)", lambda: collate(rows("14")), "error", fragment="14")
    case(
        "label None in one row only",
        lambda: collate([{**row, "labels": 1}, {**row, "labels": None}]),
        "error",
        fragment="no label",
    )
    case("label a list [1, 2]", lambda: collate(rows([1, 2])), "error", fragment="label")
    case("empty batch", lambda: collate([]), "error", fragment="empty")
    case(
        "rows without peaks or input_values",
        lambda: collate([{"labels": 1}]),
        "error",
        fragment="peak_two_theta",
    )
    case(
        "input_values of 65 points",
        lambda: collate([{"input_values": np.random.default_rng(0).random(65), "labels": 1}]),
        "error",
        fragment="65",
    )
    case(
        "input_values with NaN",
        lambda: collate([{"input_values": np.full(64, np.nan), "labels": 1}]),
        "error",
        fragment="NaN",
    )
    case(
        "peak lists of different lengths",
        lambda: collate([{**row, "peak_intensity": row["peak_intensity"][:-1], "labels": 1}]),
        "error",
        fragment=("peak", "length", "shape"),
    )
    case(
        "NaN peak position",
        lambda: collate(
            [{**row, "peak_two_theta": [float("nan")] + row["peak_two_theta"][1:], "labels": 1}]
        ),
        "error",
        fragment=("NaN", "peak"),
    )
    case(
        "negative peak intensity",
        lambda: collate(
            [{**row, "peak_intensity": [-100.0] + row["peak_intensity"][1:], "labels": 1}]
        ),
        "error",
        fragment=("negative", "peak_intensity", "intensity must be"),
    )
    case(
        "peak position 200°",
        lambda: collate(
            [{**row, "peak_two_theta": row["peak_two_theta"][:-1] + [200.0], "labels": 1}]
        ),
        "error",
        fragment=("200", "peak_two_theta", "180"),
    )
    case(
        "no peaks at all (empty lists)",
        lambda: collate([{"peak_two_theta": [], "peak_intensity": [], "labels": 1}]),
        "error",
        fragment=("no peak", "empty", "peak"),
        should="a clear error (an all-zero training pattern is no pattern)",
    )
    case(
        "peak_two_theta a string",
        lambda: collate([{"peak_two_theta": "10 20", "peak_intensity": [1, 2], "labels": 1}]),
        "error",
        fragment=("peak_two_theta", "number"),
    )
    for name, kwargs, fragment in [
        ("peaks_wavelength=0", {"peaks_wavelength": 0.0}, "peaks_wavelength"),
        ("peaks_wavelength=nan", {"peaks_wavelength": float("nan")}, "peaks_wavelength"),
        ("peaks_wavelength='1.54'", {"peaks_wavelength": "1.54"}, "peaks_wavelength"),
        ("mode='bogus'", {"mode": "bogus"}, "mode"),
        ("grid a tuple", {"grid": (5, 90, 64)}, "grid"),
        ("conditions a dict", {"conditions": {"noise": 0.1}}, "conditions"),
        ("num_labels=0", {"num_labels": 0}, "num_labels"),
        ("seed='abc'", {"seed": "abc"}, "seed"),
    ]:
        kwargs.setdefault("grid", grid)
        case(
            name, lambda kwargs=kwargs: PXRDCollator(**kwargs)(rows(1)), "error", fragment=fragment
        )
    case(
        "conditions=MeasurementConditions.clean()",
        lambda: PXRDCollator(grid, conditions=MeasurementConditions.clean(), seed=0)(rows(1)),
        "ok",
        check=labels_are([1]),
    )


# -------------------------------------------------------------------------- RandomCrystalGenerator


def group_generator() -> None:
    entry = "RandomCrystalGenerator"

    def case(name, fn, expect, fragment=None, check=None, should=None):
        run_case(entry, name, fn, expect=expect, fragment=fragment, check=check, should=should)

    def valid_crystals(count):
        def check(result, ctx):
            if len(result) != count:
                return f"{len(result)} crystals, expected {count}"
            bad = [c.space_group for c in result if not 1 <= c.space_group <= 230]
            return f"space groups {bad} outside 1..230" if bad else None

        return check

    first = RandomCrystalGenerator(seed=0, max_atoms=24).sample(2)
    case(
        "sample(2) is deterministic",
        lambda: RandomCrystalGenerator(seed=0, max_atoms=24).sample(2),
        "ok",
        check=lambda r, c: (
            None
            if [x.space_group for x in r] == [x.space_group for x in first]
            and all(np.allclose(a.lattice, b.lattice) for a, b in zip(r, first, strict=True))
            else "a second generator with the same seed gives other crystals"
        ),
    )
    case(
        "generate([3], space_group=225)",
        lambda: RandomCrystalGenerator(seed=0, max_atoms=24).generate([3], space_group=225),
        "ok",
        check=valid_crystals(1),
    )
    case(
        "sample(0)",
        lambda: RandomCrystalGenerator(seed=0, max_atoms=24).sample(0),
        "ok",
        check=valid_crystals(0),
    )
    case(
        "prior='uniform', prior_floor=0.5, max_atoms=200",
        lambda: RandomCrystalGenerator("uniform", seed=1, max_atoms=200, prior_floor=0.5).sample(1),
        "ok",
        check=valid_crystals(1),
    )
    case(
        "a 230-weight prior (numpy)",
        lambda: RandomCrystalGenerator(np.ones(230), seed=1, max_atoms=200).sample(1),
        "ok",
        check=valid_crystals(1),
    )
    for name, kwargs, fragment in [
        ("seed=-1", {"seed": -1}, "seed"),
        ("seed=1.5", {"seed": 1.5}, "seed"),
        ("max_atoms=0", {"max_atoms": 0}, "max_atoms"),
        ("max_atoms=1", {"max_atoms": 1}, "max_atoms"),
        ("prior='bogus'", {"prior": "bogus"}, "bogus"),
        ("prior of 10 weights", {"prior": [1.0] * 10}, "230"),
        ("prior all zero", {"prior": np.zeros(230)}, "prior"),
        ("prior with a negative weight", {"prior": np.r_[-1.0, np.ones(229)]}, "prior"),
        ("prior=None", {"prior": None}, "prior"),
        ("prior=5", {"prior": 5}, "prior"),
        ("prior_floor=2", {"prior_floor": 2.0}, "prior_floor"),
        ("prior_floor=-0.1", {"prior_floor": -0.1}, "prior_floor"),
        ("split='dev'", {"split": "dev"}, "split"),
        ("min_distance_factor=0", {"min_distance_factor": 0.0}, "min_distance_factor"),
        ("min_distance_factor=2", {"min_distance_factor": 2.0}, "min_distance_factor"),
        ("max_attempts=0", {"max_attempts": 0}, "max_attempts"),
        ("prior='uniform' with max_atoms=8", {"prior": "uniform", "max_atoms": 8}, "max_atoms"),
    ]:
        kwargs.setdefault("max_atoms", 24)
        case(
            name, lambda kwargs=kwargs: RandomCrystalGenerator(**kwargs), "error", fragment=fragment
        )
    generator = RandomCrystalGenerator(seed=0, max_atoms=24)
    case("sample(-1)", lambda: generator.sample(-1), "error", fragment="n must")
    case("generate([-1])", lambda: generator.generate([-1]), "error", fragment="index")
    case(
        "generate(5) (an int, not a list)",
        lambda: generator.generate(5),
        "error",
        fragment="indices",
    )
    case(
        "space_group=231",
        lambda: generator.generate([0], space_group=231),
        "error",
        fragment="space_group",
    )
    case(
        "space_group=0",
        lambda: generator.generate([0], space_group=0),
        "error",
        fragment="space_group",
    )
    case(
        "space_group=230 (16 atoms at least) with max_atoms=4",
        lambda: RandomCrystalGenerator(seed=0, max_atoms=4, prior=np.eye(230)[0]).generate(
            [0], space_group=230
        ),
        "error",
        fragment="max_atoms",
    )


# -------------------------------------------------------------------------------------- simulate


def group_simulate_peaks() -> None:
    from physmoe.data import Crystal

    entry = "simulate_peaks"
    crystal = read_cif(NACL)
    reference = simulate_peaks(crystal)

    def case(name, fn, expect, fragment=None, check=None, should=None):
        run_case(entry, name, fn, expect=expect, fragment=fragment, check=check, should=should)

    def strongest_near(two_theta):
        def check(result, ctx):
            if len(result.two_theta) == 0:
                return "no lines"
            top = result.two_theta[int(np.argmax(result.intensity))]
            return (
                None
                if abs(top - two_theta) < 0.05
                else f"strongest line at {top:.2f}, expected {two_theta:.2f}"
            )

        return check

    def same_d(result, ctx):
        common = min(len(result.d_spacing), 5)
        ref = np.sort(reference.d_spacing)[::-1][:common]
        got = np.sort(result.d_spacing)[::-1][:common]
        return (
            None if np.allclose(ref, got, atol=1e-4) else f"d-spacings {got} differ from Cu's {ref}"
        )

    case("NaCl at Cu Kα1", lambda: simulate_peaks(crystal), "ok", check=strongest_near(31.69))
    case(
        "NaCl at Co (same d-spacings)",
        lambda: simulate_peaks(crystal, wavelength=CO, two_theta_range=(5, 120)),
        "ok",
        check=same_d,
    )
    case(
        "CIF path instead of a Crystal",
        lambda: simulate_peaks(str(NACL)),
        "ok",
        check=strongest_near(31.69),
    )
    case(
        "two_theta_range as a list",
        lambda: simulate_peaks(crystal, two_theta_range=[5, 90]),
        "ok",
        check=strongest_near(31.69),
    )
    case(
        "wavelength as np.float32",
        lambda: simulate_peaks(crystal, wavelength=np.float32(CU)),
        "ok",
        check=strongest_near(31.69),
    )
    case(
        "full range 0-180",
        lambda: simulate_peaks(crystal, two_theta_range=(0, 180)),
        "ok",
        check=strongest_near(31.69),
    )
    case(
        "wavelength 100 Å (no line in range)",
        lambda: simulate_peaks(crystal, wavelength=100.0),
        "ok",
        check=lambda r, c: None if len(r) == 0 else f"{len(r)} lines",
        should="an empty list (documented)",
    )
    case(
        "kalpha2=True",
        lambda: simulate_peaks(crystal, kalpha2=True),
        "ok",
        check=lambda r, c: None if len(r) > len(reference) else "no K-alpha2 lines",
    )
    for name, kwargs, fragment in [
        ("wavelength=0", {"wavelength": 0.0}, "wavelength"),
        ("wavelength=nan", {"wavelength": float("nan")}, "wavelength"),
        ("wavelength='1.54'", {"wavelength": "1.54"}, "wavelength"),
        ("wavelength=True", {"wavelength": True}, "wavelength"),
        ("wavelength=None", {"wavelength": None}, "wavelength"),
        ("two_theta_range=(90, 5)", {"two_theta_range": (90, 5)}, "two_theta_range"),
        ("two_theta_range=(-5, 90)", {"two_theta_range": (-5, 90)}, "two_theta_range"),
        ("two_theta_range=(5, 200)", {"two_theta_range": (5, 200)}, "two_theta_range"),
        ("two_theta_range=(5, nan)", {"two_theta_range": (5, float("nan"))}, "two_theta_range"),
        ("two_theta_range=(5,)", {"two_theta_range": (5,)}, "two_theta_range"),
        ("two_theta_range=(5, 60, 90)", {"two_theta_range": (5, 60, 90)}, "two_theta_range"),
        ("two_theta_range=('a', 'b')", {"two_theta_range": ("a", "b")}, "two_theta_range"),
        ("two_theta_range=None", {"two_theta_range": None}, "two_theta_range"),
        ("two_theta_range=90 (a number)", {"two_theta_range": 90}, "two_theta_range"),
        (
            "kalpha2 with kalpha2_wavelength=0",
            {"kalpha2": True, "kalpha2_wavelength": 0.0},
            "kalpha2_wavelength",
        ),
        ("merge_tol=-1", {"merge_tol": -1.0}, "merge_tol"),
        ("min_intensity=nan", {"min_intensity": float("nan")}, "min_intensity"),
        ("form_factors='bogus'", {"form_factors": "bogus"}, "form_factors"),
        ("b_iso=-1", {"b_iso": -1.0}, "b_iso"),
        ("b_iso='abc'", {"b_iso": "abc"}, "b_iso"),
        ("b_iso={'Xx': 1}", {"b_iso": {"Xx": 1.0}}, "Xx"),
        ("b_iso=[1, 2] (a list)", {"b_iso": [1.0, 2.0]}, "b_iso"),
    ]:
        case(
            name,
            lambda kwargs=kwargs: simulate_peaks(crystal, **kwargs),
            "error",
            fragment=fragment,
        )
    case("structure=42", lambda: simulate_peaks(42), "error", fragment="int")
    case("structure=None", lambda: simulate_peaks(None), "error", fragment="None")
    case(
        "missing CIF path",
        lambda: simulate_peaks(str(TMP / "absent.cif")),
        "error",
        fragment="absent.cif",
    )
    case(
        "a dict structure", lambda: simulate_peaks({"lattice": np.eye(3)}), "error", fragment="dict"
    )
    case(
        "Crystal with a flat cell",
        lambda: simulate_peaks(
            Crystal(np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0.0]]) * 5, ["Na"], np.zeros((1, 3)))
        ),
        "error",
        fragment=("lattice", "volume"),
    )
    case(
        "Crystal with occupancy 0",
        lambda: simulate_peaks(Crystal(np.eye(3) * 5, ["Na"], np.zeros((1, 3)), np.zeros(1))),
        "error",
        fragment="occupanc",
    )
    case(
        "Crystal with element 'Xx'",
        lambda: simulate_peaks(Crystal(np.eye(3) * 5, ["Xx"], np.zeros((1, 3)))),
        "error",
        fragment="Xx",
    )
    code_564 = f"""
        from physmoe.data import read_cif, simulate_peaks
        import numpy as np
        from physmoe.data import Crystal
        nacl = read_cif({str(NACL)!r})
        crystal = Crystal(
            nacl.lattice * 100.0, nacl.species, nacl.frac_coords, nacl.occupancies, nacl.b_iso
        )  # a = 564: pm as Angstrom
        result = len(simulate_peaks(crystal))
    """
    child_case(
        entry,
        "NaCl with a = 564 (cell in pm)",
        code_564,
        expect="error",
        fragment=("cell", "reflections", "too large", "564"),
        timeout=120,
        should="a clear error (or an answer) within reasonable time and memory, not a crash",
    )
    code_wavelength = f"""
        from physmoe.data import simulate_peaks
        result = len(simulate_peaks({str(NACL)!r}, wavelength=1e-3))
    """
    child_case(
        entry,
        "wavelength=1e-3 Å",
        code_wavelength,
        expect="error",
        fragment=("wavelength", "reflections", "too many"),
        timeout=120,
        should="a clear error naming the wavelength (too many reflections), not a crash",
    )


# --------------------------------------------------------------------------------------- the CLI


def group_cli_predict() -> None:
    model = FX.model
    root = folder("cli_predict")
    tt, inten = profile(CU, 5.0, 90.0, 0.02)
    clean = write_text(root / "clean.xy", xy_text(tt, inten))
    tt_co, in_co = profile(CO, 5.0, 115.0, 0.02)
    co = write_text(root / "co.xy", xy_text(tt_co, in_co, header="# Radiation: Co"))
    co_plain = write_text(root / "co_plain.xy", xy_text(tt_co, in_co))
    ambiguous = write_text(root / "ambiguous.xy", xy_text(tt, inten, header="# Wavelength: 0.154"))
    radians = write_text(root / "radians.xy", xy_text(np.radians(tt), inten, fmt="{:.5f} {:.2f}"))
    empty_cif = write_text(root / "empty.cif", "")
    gz = write_bytes(root / "clean.xy.gz", gzip.compress(xy_text(tt, inten).encode(), mtime=0))
    reference = FX.predictor.predict(tt, inten)[0]
    inputs = [clean, co, co_plain, ambiguous, radians, empty_cif, gz, model]

    def case(name, argv, expect, fragment=None, check=None, should=None):
        cli_case(
            name,
            ["predict", *argv],
            expect=expect,
            fragment=fragment,
            check=check,
            protect=inputs,
            should=should,
        )

    def best_is(space_group_symbol):
        return json_check(
            lambda a: (
                None
                if a[0]["candidates"][0]["symbol"] == space_group_symbol
                else f"best {a[0]['candidates'][0]['symbol']}, expected {space_group_symbol}"
            )
        )

    case(
        "MODEL clean.xy",
        [model, clean],
        "ok",
        check=lambda r, c: None if "clean.xy" in r.stdout and "rank" in r.stdout else "no table",
    )
    case(
        "MODEL clean.xy --json",
        [model, clean, "--json"],
        "ok",
        check=json_check(
            lambda a: (
                None
                if a[0]["wavelength_note"] and "not stated" in a[0]["wavelength_note"]
                else f"wavelength_note {a[0]['wavelength_note']!r}"
            )
        ),
    )
    case(
        "--json answer equals the library's",
        [model, clean, "--json"],
        "ok",
        check=best_is(reference.best.symbol),
    )
    case(
        "Co header --json (wavelength in JSON)",
        [model, co, "--json"],
        "ok",
        check=json_check(
            lambda a: (
                None
                if abs((a[0]["wavelength"] or 0) - CO) < 1e-4
                and "stated" in (a[0]["wavelength_note"] or "")
                else f"wavelength {a[0]['wavelength']}, note {a[0]['wavelength_note']!r}"
            )
        ),
    )
    case(
        "Co data, no header, no --wavelength (said so)",
        [model, co_plain, "--json"],
        "ok",
        check=json_check(
            lambda a: (
                None
                if "not stated" in (a[0]["wavelength_note"] or "")
                else f"note {a[0]['wavelength_note']!r}"
            )
        ),
    )
    case(
        "Co data, no header: the table says so",
        [model, co_plain],
        "ok",
        check=lambda r, c: (
            None
            if "not stated" in r.stdout
            else "the table does not say the wavelength was assumed"
        ),
    )
    case(
        "--wavelength 1.78897",
        [model, co_plain, "--wavelength", CO, "--json"],
        "ok",
        check=best_is(reference.best.symbol),
    )
    case(
        "--model MODEL FILE",
        ["--model", model, clean, "--json"],
        "ok",
        check=best_is(reference.best.symbol),
    )
    case(
        "NaCl CIF",
        [model, NACL, "--json"],
        "ok",
        check=json_check(
            lambda a: None if a[0]["source"] == "NaCl_rocksalt.cif" else a[0]["source"]
        ),
    )
    case(
        "two files",
        [model, clean, NACL, "--json"],
        "ok",
        check=json_check(lambda a: None if len(a) == 2 else f"{len(a)} answers"),
    )
    case(".xy.gz", [model, gz, "--json"], "ok", check=best_is(reference.best.symbol))
    case(
        "--min-confidence 1",
        [model, clean, "--min-confidence", "1", "--json"],
        "ok",
        check=json_check(lambda a: None if a[0]["uncertain"] else "not uncertain"),
    )
    case(
        "--top-k 500 (more than 230)",
        [model, clean, "--top-k", "500", "--json"],
        "ok",
        check=json_check(
            lambda a: (
                None if len(a[0]["candidates"]) == 230 else f"{len(a[0]['candidates'])} candidates"
            )
        ),
    )
    case("ambiguous header", [model, ambiguous], "error", fragment="ambiguous")
    case(
        "ambiguous header --wavelength 1.54056",
        [model, ambiguous, "--wavelength", CU, "--json"],
        "ok",
        check=best_is(reference.best.symbol),
    )
    case("2θ in radians", [model, radians], "error", fragment="covers")
    case("empty CIF", [model, empty_cif], "error", fragment="empty")
    case("missing file", [model, root / "absent.xy"], "error", fragment="absent.xy")
    case(
        "one good, one missing file",
        [model, clean, root / "absent.xy"],
        "error",
        fragment="absent.xy",
    )
    case("--wavelength 0", [model, clean, "--wavelength", "0"], "error", fragment="wavelength")
    case("--wavelength nan", [model, clean, "--wavelength", "nan"], "error", fragment="wavelength")
    case("--wavelength abc", [model, clean, "--wavelength", "abc"], "error", fragment="abc")
    case(
        "--wavelength 0.154 (nm by mistake)",
        [model, clean, "--wavelength", "0.154"],
        "error",
        fragment="0.154",
    )
    case("--top-k 0", [model, clean, "--top-k", "0"], "error", fragment="top_k")
    case("--top-k 2.5", [model, clean, "--top-k", "2.5"], "error", fragment="2.5")
    case(
        "--min-confidence 2",
        [model, clean, "--min-confidence", "2"],
        "error",
        fragment="min_confidence",
    )
    if not torch.cuda.is_available():
        case(
            "--device cuda (no CUDA)", [model, clean, "--device", "cuda"], "error", fragment="CUDA"
        )
    case("--device bogus", [model, clean, "--device", "bogus"], "error", fragment="bogus")
    case(
        "missing model folder",
        [TMP / "no_model", clean],
        "error",
        fragment=("no such checkpoint", "no_model"),
    )
    empty_model = folder("cli_models", "empty")
    case("empty model folder", [empty_model, clean], "error", fragment="config.json")
    truncated = copy_model("cli_truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cli_case(
        "truncated model.safetensors",
        ["predict", truncated, clean],
        expect="error",
        fragment="safetensors",
        protect=[truncated, clean],
    )
    no_config = copy_model("cli_no_config")
    (no_config / "config.json").unlink()
    cli_case(
        "model without config.json",
        ["predict", no_config, clean],
        expect="error",
        fragment="config.json",
        protect=[no_config, clean],
    )
    bad_json = copy_model("cli_bad_json")
    (bad_json / "config.json").write_text("{oops")
    cli_case(
        "model with a corrupt config.json",
        ["predict", bad_json, clean],
        expect="error",
        fragment="config.json",
        protect=[bad_json, clean],
    )
    mismatch = copy_model("cli_mismatch")
    config = json.loads((mismatch / "config.json").read_text())
    config["hidden_sizes"] = [4, 8, 8, 8, 8, 16]
    config["feature_dim"] = 16
    (mismatch / "config.json").write_text(json.dumps(config))
    cli_case(
        "model whose weights do not match config.json",
        ["predict", mismatch, clean],
        expect="error",
        fragment=("size mismatch", "shape"),
        protect=[mismatch, clean],
    )
    case("MODEL only, no file", [model], "error", fragment=("folder", "files"))
    case("a folder as the only argument", [root], "error", fragment=("folder", "files"))
    from physmoe.inference import _SHIPPED_CHECKPOINT

    shipped = (_SHIPPED_CHECKPOINT / "config.json").is_file()
    case(
        "FILE only (the shipped checkpoint)",
        [clean, "--json"],
        "ok" if shipped else "error",
        fragment=None if shipped else ("pretrained", "checkpoint"),
        check=json_check(lambda a: None if len(a) == 1 else f"{len(a)} answers")
        if shipped
        else None,
        should="the shipped model's answer"
        if shipped
        else "a clear error: no shipped checkpoint in this installation",
    )
    case("no arguments", [], "error", fragment=("required", "arguments", "FILE"))
    cli_case("no command", [], expect="error", fragment=("required", "command"), entry="physmoe")
    cli_case("unknown command 'fit'", ["fit"], expect="error", fragment="fit", entry="physmoe")


def group_cli_evaluate() -> None:
    model, dataset = FX.model, FX.dataset
    root = folder("cli_evaluate")
    existing = write_text(root / "metrics.json", '{"keep": true}')
    protect = [model, dataset, existing]

    def case(name, argv, expect, fragment=None, check=None, should=None, extra_protect=()):
        cli_case(
            name,
            ["evaluate", *argv],
            expect=expect,
            fragment=fragment,
            check=check,
            protect=[*protect, *extra_protect],
            should=should,
        )

    out = root / "m.json"
    case(
        "--split test (whole split) --output m.json",
        [model, "--dataset", dataset, "--output", out],
        "ok",
        check=lambda r, c: (
            None
            if out.is_file() and json.loads(out.read_text()).get("test_num_samples", 0) > 0
            else "metrics not written"
        ),
    )
    case(
        "--split test --max-samples 5 --output m.json",
        [model, "--dataset", dataset, "--max-samples", "5", "--output", out],
        "ok",
        should="5 samples evaluated; the dataset folder untouched",
        check=lambda r, c: (
            None
            if out.is_file() and json.loads(out.read_text()).get("test_num_samples") == 5
            else "metrics not written / not 5 samples"
        ),
    )
    case(
        "--split train --max-samples 5",
        [model, "--dataset", dataset, "--split", "train", "--max-samples", "5", "--output", out],
        "ok",
        should="5 samples evaluated; the dataset folder untouched",
        check=lambda r, c: (
            None
            if json.loads(out.read_text()).get("train_num_samples") == 5
            else f"train_num_samples {json.loads(out.read_text()).get('train_num_samples')}"
        ),
    )
    case(
        "--split bogus",
        [model, "--dataset", dataset, "--split", "bogus", "--output", existing],
        "error",
        fragment="bogus",
    )
    case(
        "--max-samples 0",
        [model, "--dataset", dataset, "--max-samples", "0"],
        "error",
        fragment=("samples", "0"),
    )
    case(
        "--max-samples -1",
        [model, "--dataset", dataset, "--max-samples", "-1"],
        "error",
        fragment=("samples", "-1"),
    )
    case(
        "--batch-size 0",
        [model, "--dataset", dataset, "--batch-size", "0", "--max-samples", "5"],
        "error",
        fragment="batch",
    )
    case(
        "--batch-size -4",
        [model, "--dataset", dataset, "--batch-size", "-4", "--max-samples", "5"],
        "error",
        fragment="batch",
    )
    case(
        "missing dataset folder",
        [model, "--dataset", root / "no_dataset"],
        "error",
        fragment="no_dataset",
    )
    case("dataset is a file", [model, "--dataset", existing], "error", fragment="metrics.json")
    empty = folder("cli_evaluate", "empty_dataset")
    case(
        "dataset is an empty folder", [model, "--dataset", empty], "error", fragment="empty_dataset"
    )
    case("--dataset stream", [model, "--dataset", "stream"], "error", fragment="stream")
    case("missing model", [root / "no_model", "--dataset", dataset], "error", fragment="no_model")
    case(
        "model is the dataset folder",
        [dataset, "--dataset", dataset],
        "error",
        fragment="config.json",
    )
    case(
        "--conditions lab without --real",
        [model, "--conditions", "lab"],
        "error",
        fragment="--real",
    )
    case(
        "--real with a missing model",
        [root / "no_model", "--real"],
        "error",
        fragment=("no such", "not found", "does not exist"),
    )
    case(
        "--output into a missing folder",
        [
            model,
            "--dataset",
            dataset,
            "--max-samples",
            "5",
            "--output",
            root / "nowhere" / "m.json",
        ],
        "error",
        fragment="nowhere",
        should="a clear error, best before evaluating",
    )


def group_cli_simulate() -> None:
    root = folder("cli_simulate")
    user = folder("cli_simulate", "user_files")
    mine = write_text(user / "notes.txt", "mine")
    a_file = write_text(root / "a_file", "not a folder")

    def case(name, argv, expect, fragment=None, check=None, should=None, protect=()):
        cli_case(
            name,
            ["simulate", *argv],
            expect=expect,
            fragment=fragment,
            check=check,
            protect=[mine, a_file, *protect],
            should=should,
        )

    out = root / "fast"
    case(
        "--generator fast, 12 structures",
        [
            out,
            "--num-structures",
            "12",
            "--generator",
            "fast",
            "--num-proc",
            "1",
            "--shard-size",
            "6",
            "--max-atoms",
            "16",
        ],
        "ok",
        check=lambda r, c: (
            None if (out / "dataset").is_dir() and "split" in r.stdout else "no dataset written"
        ),
    )
    case(
        "into a non-empty folder without --overwrite",
        [user, "--num-structures", "4", "--generator", "fast", "--num-proc", "1"],
        "error",
        fragment=("not empty", "non-empty", "overwrite"),
    )
    case(
        "--num-structures 0",
        [root / "n0", "--num-structures", "0", "--generator", "fast"],
        "error",
        fragment="num_structures",
    )
    case(
        "--num-structures -5",
        [root / "n5", "--num-structures", "-5", "--generator", "fast"],
        "error",
        fragment="num_structures",
    )
    case(
        "--num-proc 0",
        [root / "p0", "--num-structures", "4", "--num-proc", "0", "--generator", "fast"],
        "error",
        fragment="num_proc",
    )
    case(
        "--shard-size 0",
        [root / "s0", "--num-structures", "4", "--shard-size", "0", "--generator", "fast"],
        "error",
        fragment="shard_size",
    )
    case(
        "--max-atoms 0",
        [
            root / "m0",
            "--num-structures",
            "4",
            "--max-atoms",
            "0",
            "--generator",
            "fast",
            "--num-proc",
            "1",
        ],
        "error",
        fragment="max_atoms",
    )
    case(
        "--seed -1",
        [
            root / "seed",
            "--num-structures",
            "4",
            "--seed",
            "-1",
            "--generator",
            "fast",
            "--num-proc",
            "1",
        ],
        "error",
        fragment="seed",
    )
    case(
        "--prior bogus",
        [root / "prior", "--num-structures", "4", "--prior", "bogus", "--generator", "fast"],
        "error",
        fragment="bogus",
    )
    case(
        "--generator bogus",
        [root / "gen", "--num-structures", "4", "--generator", "bogus"],
        "error",
        fragment="bogus",
    )
    case("--num-structures ten", [root / "ten", "--num-structures", "ten"], "error", fragment="ten")
    case(
        "out_dir is an existing file",
        [a_file, "--num-structures", "4", "--generator", "fast", "--num-proc", "1"],
        "error",
        fragment="a_file",
    )
    case(
        "--overwrite with --num-structures 0 (user files kept)",
        [user, "--num-structures", "0", "--overwrite", "--generator", "fast"],
        "error",
        fragment="num_structures",
    )
    NOT_SURVEYED.append(
        (
            "physmoe simulate --generator pyxtal",
            (
                "pyxtal generation of even a few structures takes minutes on this machine; the "
                "argument checks are shared with the fast generator"
            ),
        )
    )


def group_cli_push() -> None:
    model = FX.model
    empty = folder("cli_push", "empty")

    def case(name, argv, expect, fragment=None, should=None):
        cli_case(
            name,
            ["push", *argv],
            expect=expect,
            fragment=fragment,
            protect=[model, empty],
            should=should,
        )

    case("valid folder, offline", [model, "someone/tiny"], "error", fragment="offline")
    case(
        "missing folder, offline",
        [TMP / "no_model", "someone/tiny"],
        "error",
        fragment=("no_model", "offline"),
    )
    case(
        "empty folder, offline",
        [empty, "someone/tiny"],
        "error",
        fragment=("config.json", "offline"),
    )
    case(
        "invalid repo id 'bad id!!', offline",
        [model, "bad id!!"],
        "error",
        fragment=("bad id!!", "offline", "repo"),
    )
    case("no repo id", [model], "error", fragment=("repo_id", "required"))
    from physmoe.hub import checkpoint_files

    run_case(
        "physmoe.hub.checkpoint_files",
        "missing folder",
        lambda: checkpoint_files(TMP / "no_model"),
        expect="error",
        fragment="no_model",
    )
    run_case(
        "physmoe.hub.checkpoint_files",
        "empty folder",
        lambda: checkpoint_files(empty),
        expect="error",
        fragment="config.json",
        protect=[empty],
    )
    run_case(
        "physmoe.hub.checkpoint_files",
        "trained model folder",
        lambda: checkpoint_files(model),
        expect="ok",
        check=lambda r, c: (
            None if "model.safetensors" in r and "config.json" in r else f"files {r}"
        ),
        protect=[model],
    )


def group_cli_train() -> None:
    dataset = FX.dataset
    root = folder("cli_train")
    old = TMP / "runs" / "base"  # the finished model of group_setup
    finished = (old / "model.safetensors").is_file()

    def settings(out, **extra):
        return train_settings(dataset, out, **extra)

    def config(name, values):
        return write_config(root / f"{name}.yaml", values)

    def no_model(out):
        return lambda: (
            f"trained and saved a model in {out.name} before refusing"
            if (Path(out) / "model.safetensors").is_file()
            else None
        )

    def case(name, argv, expect, fragment=None, check=None, should=None, protect=(), after=None):
        cli_case(
            name,
            ["train", *argv],
            expect=expect,
            fragment=fragment,
            check=check,
            protect=protect,
            should=should,
            after=after,
        )

    # -- refused before anything is touched
    case("no config", [], "error", fragment="usage")
    case("missing config", [root / "absent.yaml"], "error", fragment="not found")
    case("config is a folder", [root], "error", fragment=("is a folder", "directory", "not a file"))
    broken = write_text(
        root / "broken.yaml", "preset: reference\nnum_train_epochs: [3\nlearning_rate: 1e-3\n"
    )
    case("YAML syntax error", [broken], "error", fragment="invalid YAML", protect=[broken])
    tabs = write_text(root / "tabs.yaml", "preset: reference\n\tnum_train_epochs: 3\n")
    case("tab indentation", [tabs], "error", fragment="invalid YAML")
    a_list = write_text(root / "list.yaml", "- preset\n- reference\n")
    case("YAML list, not a mapping", [a_list], "error", fragment="mapping")
    scalar = write_text(root / "scalar.yaml", "just a string\n")
    case("YAML scalar", [scalar], "error", fragment="mapping")
    utf16 = write_bytes(
        root / "utf16.yaml", yaml.safe_dump(settings(root / "u16")).encode("utf-16")
    )
    case("UTF-16 config", [utf16], "error", fragment=("UTF-8", "utf16.yaml"))
    binary = write_bytes(root / "binary.yaml", bytes(range(256)))
    case("binary file as config", [binary], "error", fragment=("binary.yaml", "UTF-8", "YAML"))
    case(
        "unknown setting",
        [config("unknown", {**settings(root / "x"), "num_train_epoch": 1})],
        "error",
        fragment="num_train_epoch",
    )
    case(
        "num_train_epochs 'abc'",
        [config("epochs_abc", settings(root / "x", num_train_epochs="abc"))],
        "error",
        fragment="abc",
    )
    case(
        "--num_train_epochs abc on the command line",
        [config("ok1", settings(root / "x")), "--num_train_epochs", "abc"],
        "error",
        fragment="abc",
    )
    case(
        "unknown command-line flag --epochs",
        [config("ok2", settings(root / "x")), "--epochs", "3"],
        "error",
        fragment="--epochs",
    )
    case(
        "--num_train_epochs without a value",
        [config("ok3", settings(root / "x")), "--num_train_epochs"],
        "error",
        fragment="num_train_epochs",
    )
    case(
        "dataset missing",
        [config("nodata", settings(root / "nodata_out", dataset=str(root / "no_dataset")))],
        "error",
        fragment="no_dataset",
        after=no_model(root / "nodata_out"),
    )
    case(
        "dataset is a file",
        [config("filedata", settings(root / "filedata_out", dataset=str(broken)))],
        "error",
        fragment="broken.yaml",
        after=no_model(root / "filedata_out"),
    )
    case(
        "augmentation 'bogus'",
        [config("aug", settings(root / "aug_out", augmentation="bogus"))],
        "error",
        fragment="bogus",
        after=no_model(root / "aug_out"),
    )
    case(
        "preset 'bogus'",
        [config("preset", settings(root / "preset_out", preset="bogus"))],
        "error",
        fragment="bogus",
    )
    case(
        "model_overrides unknown field",
        [config("over1", settings(root / "o1", model_overrides={"tua": 1.0}))],
        "error",
        fragment="tua",
    )
    case(
        "model_overrides num_experts 0",
        [config("over2", settings(root / "o2", model_overrides={"num_experts": 0}))],
        "error",
        fragment="num_experts",
    )
    case(
        "model_overrides broken JSON string",
        [config("over3", settings(root / "o3", model_overrides="{tau: 1"))],
        "error",
        fragment="model_overrides",
    )
    case(
        "model_overrides a YAML list",
        [config("over4", settings(root / "o4", model_overrides=["tau", 1]))],
        "error",
        fragment="model_overrides",
    )
    case(
        "model_name_or_path missing",
        [config("base_missing", settings(root / "bm", model_name_or_path=str(root / "no_model")))],
        "error",
        fragment=("no such", "not found", "does not exist"),
    )
    case(
        "max_train_samples 0",
        [config("mts", settings(root / "mts_out", max_train_samples=0))],
        "error",
        fragment="max_train_samples",
    )
    case(
        "max_eval_samples -5",
        [config("mes", settings(root / "mes_out", max_eval_samples=-5))],
        "error",
        fragment="max_eval_samples",
    )
    case(
        "per_device_train_batch_size 0",
        [config("bs0", settings(root / "bs0_out", per_device_train_batch_size=0))],
        "error",
        fragment="batch_size",
        after=no_model(root / "bs0_out"),
    )
    case(
        "load_best_model_at_end with save_strategy 'no'",
        [config("best", settings(root / "best_out", save_strategy="no"))],
        "error",
        fragment=("save", "load_best_model_at_end"),
    )
    case(
        "dataset stream without max_steps",
        [config("stream", settings(root / "stream_out", dataset="stream", max_steps=-1))],
        "error",
        fragment="max_steps",
    )
    case(
        "stream_validation_size 0",
        [
            config(
                "stream0",
                settings(
                    root / "stream0_out", dataset="stream", max_steps=2, stream_validation_size=0
                ),
            )
        ],
        "error",
        fragment="stream_validation_size",
    )
    case(
        "push_to_hub offline",
        [config("push", settings(root / "push_out", push_to_hub=True, hub_model_id="tiny"))],
        "error",
        fragment="offline",
        after=no_model(root / "push_out"),
        should="a clear error before training (offline)",
    )
    a_file = write_text(root / "output_is_file", "x")
    case(
        "output_dir is an existing file",
        [config("outfile", settings(a_file))],
        "error",
        fragment=("not a directory", "is a file", "not a folder"),
        protect=[a_file],
    )
    # -- a finished model in output_dir
    if finished:
        base_config = config("over_base", settings(old))
        case(
            "finished model, no --overwrite_output",
            [base_config],
            "error",
            fragment="already holds a trained model",
            protect=[old],
        )
        for name, extra, fragment in [
            ("missing dataset", ["--dataset", str(root / "no_dataset")], "no_dataset"),
            ("augmentation bogus", ["--augmentation", "bogus"], "bogus"),
            ("preset bogus", ["--preset", "bogus"], "bogus"),
            ("model_overrides unknown field", ["--model_overrides", '{"tua": 1}'], "tua"),
            ("max_train_samples 0", ["--max_train_samples", "0"], "max_train_samples"),
            (
                "model_name_or_path missing",
                ["--model_name_or_path", str(root / "no_model")],
                ("no such", "not found", "does not exist"),
            ),
            ("num_train_epochs abc", ["--num_train_epochs", "abc"], "abc"),
        ]:
            case(
                f"--overwrite_output true with {name}: old model kept",
                [base_config, "--overwrite_output", "true", *extra],
                "error",
                fragment=fragment,
                protect=[old],
                should="a clear error; the finished model untouched",
                after=lambda: (
                    "left the sibling folder base.physmoe-new behind"
                    if (old.parent / "base.physmoe-new").exists()
                    else None
                ),
            )
        broken_over = write_text(
            root / "broken_over.yaml",
            f"output_dir: {old}\noverwrite_output: true\nnum_train_epochs: [3\n",
        )
        case(
            "--overwrite_output in a broken YAML: old model kept",
            [broken_over],
            "error",
            fragment="invalid YAML",
            protect=[old],
        )
    # -- full (tiny) runs
    fresh = TMP / "data" / "fresh_copy"
    shutil.copytree(
        dataset, fresh, ignore=shutil.ignore_patterns("cache-*")
    )  # earlier cases cached there
    partial = root / "partial"
    (partial / "checkpoint-7").mkdir(parents=True)
    (partial / "checkpoint-7" / "config.json").write_text("{}")
    case(
        "partial checkpoint-7 in output_dir (skipped on resume)",
        [config("partial", settings(partial, max_train_samples=16, max_eval_samples=8))],
        "ok",
        check=lambda r, c: (
            None if (partial / "model.safetensors").is_file() else "no model written"
        ),
        should="trains from scratch (the partial checkpoint skipped with a warning)",
    )
    limited = root / "limited"
    case(
        "max_train_samples 16 on a fresh dataset copy",
        [
            config(
                "limited",
                {
                    **settings(limited, max_train_samples=16, max_eval_samples=8),
                    "dataset": str(fresh),
                },
            )
        ],
        "ok",
        check=lambda r, c: (
            None if (limited / "model.safetensors").is_file() else "no model written"
        ),
        protect=[fresh],
        should="trains; the dataset folder untouched",
    )
    auto = root / "auto"
    case(
        "no use_cpu / bf16 on a CPU (automatic precision)",
        [
            config(
                "auto",
                settings(auto, use_cpu=None, bf16=None, max_train_samples=16, max_eval_samples=8),
            )
        ],
        "ok",
        check=lambda r, c: None if (auto / "model.safetensors").is_file() else "no model written",
    )
    late = root / "late_predict"
    case(
        "predict_files with a missing file",
        [
            config(
                "late",
                settings(
                    late,
                    predict_files=[str(root / "absent.xy")],
                    max_train_samples=16,
                    max_eval_samples=8,
                ),
            )
        ],
        "error",
        fragment="absent.xy",
        after=no_model(late),
        should="a clear error before training, naming the missing file",
    )
    metric = root / "metric"
    case(
        "metric_for_best_model 'bogus'",
        [
            config(
                "metric",
                settings(
                    metric, metric_for_best_model="bogus", max_train_samples=16, max_eval_samples=8
                ),
            )
        ],
        "error",
        fragment="bogus",
        after=no_model(metric),
        should="a clear error before training naming the metric",
    )
    NOT_SURVEYED.append(
        (
            "physmoe train with an empty YAML",
            (
                "it would start the default full training (default dataset, "
                "small preset) in ./trainer_output"
            ),
        )
    )


def _xrdml(
    counts: str,
    positions: str = "<startPosition>10.000</startPosition><endPosition>80.000</endPosition>",
    unit: str = "deg",
    wavelength: str = '<kAlpha1 unit="Angstrom">1.5405980</kAlpha1>',
    anode: str = "Cu",
    root: str = "xrdMeasurements",
) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{root} xmlns="http://www.xrdml.com/XRDMeasurement/1.5" status="Completed">
 <xrdMeasurement measurementType="Scan" status="Completed">
  <usedWavelength intended="K-Alpha 1">{wavelength}</usedWavelength>
  <incidentBeamPath><xRayTube><anodeMaterial>{anode}</anodeMaterial></xRayTube></incidentBeamPath>
  <scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">
   <dataPoints>
    <positions axis="2Theta" unit="{unit}">{positions}</positions>
    <commonCountingTime unit="seconds">1.0</commonCountingTime>
    {counts}
   </dataPoints>
  </scan>
 </xrdMeasurement>
</{root}>
"""


def _ras(
    rows: str,
    header: str = (
        '*HW_XG_TARGET_NAME "Cu"\n*HW_XG_WAVE_LENGTH_ALPHA1 "1.540593"\n'
        '*HW_XG_WAVE_LENGTH_UNIT "Angstrom"\n'
    ),
) -> str:
    return (
        "*RAS_DATA_START\n*RAS_HEADER_START\n"
        + header
        + '*MEAS_SCAN_UNIT_Y "counts"\n*RAS_HEADER_END\n'
        "*RAS_INT_START\n" + rows + "*RAS_INT_END\n*RAS_DATA_END\n"
    )


def group_instrument_files() -> None:
    """Instrument files through read_pattern (and predict), only if read_pattern dispatches
    their suffixes (another helper is adding the readers); otherwise they are listed as not yet
    surveyed."""
    import inspect

    import physmoe.data.readers as readers

    try:
        from physmoe.data.instruments import INSTRUMENT_SUFFIXES
    except ImportError:
        INSTRUMENT_SUFFIXES = ()
    dispatched = "INSTRUMENT_SUFFIXES" in inspect.getsource(readers.read_pattern)
    suffixes = [
        s for s in (".xrdml", ".brml", ".raw", ".ras") if dispatched and s in INSTRUMENT_SUFFIXES
    ]
    missing = [s for s in (".xrdml", ".brml", ".raw", ".ras") if s not in suffixes]
    if missing:
        NOT_SURVEYED.append(
            (
                f"read_pattern on instrument files ({', '.join(missing)})",
                (
                    "read_pattern does not dispatch these suffixes yet (they would be read as "
                    "text); to be surveyed once the readers land"
                ),
            )
        )
    if not suffixes:
        return
    entry = "read_pattern (instrument files)"
    root = folder("instrument")

    case = case_of(entry, read_pattern, protect=lambda path: [path])

    def sane(minimum_points, wavelength=1.5406):
        def check(result, ctx):
            if len(result.two_theta) < minimum_points:
                return f"{len(result.two_theta)} points, expected at least {minimum_points}"
            if not np.all(np.diff(result.two_theta) > 0):
                return "2θ not ascending"
            if result.wavelength is None or abs(result.wavelength - wavelength) > 1e-3:
                return f"wavelength {result.wavelength}, the file states {wavelength}"
            return None

        return check

    # real files (tests/data/files, read from copies) and truncated copies of them
    samples = sorted(
        p for p in (REPO / "tests" / "data" / "files").glob("*") if p.suffix.lower() in suffixes
    )
    for sample in samples:
        copy = root / sample.name
        shutil.copy(sample, copy)
        case(f"sample {sample.name}", copy, "ok", check=sane(100))
        data = sample.read_bytes()
        for fraction in (0.02, 0.5):
            cut = write_bytes(
                root / f"cut{int(fraction * 100)}_{sample.name}", data[: int(len(data) * fraction)]
            )
            case(
                f"{sample.name} truncated to {fraction:.0%}",
                cut,
                "error",
                fragment=(cut.name,),
                should="a clear error naming the file (never a partial pattern)",
            )
    tt = np.round(np.arange(10, 80.0001, 0.1), 3)
    counts = (100 + 1000 * np.exp(-0.5 * ((tt - 31.7) / 0.3) ** 2)).astype(int)
    good_counts = '<counts unit="counts">' + " ".join(map(str, counts)) + "</counts>"
    if ".xrdml" in suffixes:
        good = write_text(root / "good.xrdml", _xrdml(good_counts))
        case("synthetic .xrdml", good, "ok", check=sane(len(tt)))
        upper = write_text(root / "GOOD.XRDML", _xrdml(good_counts))
        case("upper-case .XRDML", upper, "ok", check=sane(len(tt)))
        case(
            ".xrdml with wavelength=1.78897 given",
            good,
            "ok",
            check=wavelength_is(1.78897),
            wavelength=1.78897,
        )
        case(".xrdml with wavelength=0", good, "error", fragment="wavelength", wavelength=0.0)
        case(".xrdml with wavelength=-1", good, "error", fragment="wavelength", wavelength=-1.0)
        xrdml_bad = [
            ("truncated XML", _xrdml(good_counts)[:400], ("XML", "well-formed")),
            ("another XML document (<html>)", "<html><body>10 1</body></html>", ("XRDML", "root")),
            (
                "counts with text",
                _xrdml('<counts unit="counts">1 2 x 4</counts>'),
                ("counts", "not a number"),
            ),
            ("empty <counts>", _xrdml('<counts unit="counts"></counts>'), ("empty", "counts")),
            ("no <counts>", _xrdml(""), ("counts", "intensities")),
            (
                "listPositions of 3 values for 4 counts",
                _xrdml(
                    '<counts unit="counts">1 2 3 4</counts>',
                    positions="<listPositions>10 11 12</listPositions>",
                ),
                ("listPositions", "values"),
            ),
            ("2θ in radians", _xrdml(good_counts, unit="rad"), ("rad", "degrees")),
            (
                "2θ start = end",
                _xrdml(
                    good_counts,
                    positions="<startPosition>30</startPosition><endPosition>30</endPosition>",
                ),
                ("constant", "2theta"),
            ),
            (
                "2θ from 170 to 200",
                _xrdml(
                    good_counts,
                    positions="<startPosition>170</startPosition><endPosition>200</endPosition>",
                ),
                ("180", "outside"),
            ),
            (
                "NaN count",
                _xrdml(
                    '<counts unit="counts">1 NaN 3</counts>',
                    positions="<startPosition>10</startPosition><endPosition>12</endPosition>",
                ),
                ("non-finite", "nan"),
            ),
            ("a text pattern named .xrdml", "10 1\n11 2\n", ("XML", "xrdml")),
            ("UTF-16 XRDML", None, None),
        ]
        for index, (name, text, fragment) in enumerate(xrdml_bad):
            if text is None:  # valid XML in UTF-16 with its declaration: must read
                path = write_bytes(
                    root / f"bad_{index}.xrdml",
                    _xrdml(good_counts)
                    .replace('encoding="UTF-8"', 'encoding="UTF-16"')
                    .encode("utf-16"),
                )
                case(name, path, "ok", check=sane(len(tt)))
                continue
            path = write_text(root / f"bad_{index}.xrdml", text)
            case(f".xrdml: {name}", path, "error", fragment=fragment)
        negative = write_text(
            root / "negative.xrdml",
            _xrdml(
                '<counts unit="counts">-1 -2 -3</counts>',
                positions="<startPosition>10</startPosition><endPosition>12</endPosition>",
            ),
        )
        case(
            ".xrdml: negative counts only",
            negative,
            "either",
            fragment=("negative", "counts"),
            check=points_are(3),
            should="read as stored (as text files are; predict refuses it), or a clear error",
        )
        implausible = write_text(
            root / "implausible.xrdml",
            _xrdml(good_counts, wavelength='<kAlpha1 unit="Angstrom">154.06</kAlpha1>', anode="Xx"),
        )
        case(
            ".xrdml stating kAlpha1 154.06 and anode 'Xx'",
            implausible,
            "either",
            fragment=("154.06", "wavelength"),
            check=wavelength_is(None),
            should="a clear error, or no wavelength; never 154.06 Å used",
        )
    if ".brml" in suffixes:
        no_raw = root / "no_raw.brml"
        with zipfile.ZipFile(no_raw, "w") as archive:
            archive.writestr("readme.txt", "not a Bruker file")
        case(".brml: a zip without RawData", no_raw, "error", fragment=("RawData", "no_raw.brml"))
        bad_xml = root / "bad_xml.brml"
        with zipfile.ZipFile(bad_xml, "w") as archive:
            archive.writestr(
                "Experiment0/RawData0.xml", "<RawData><DataRoutes><DataRoute><Datum>1,2"
            )
        case(
            ".brml: RawData0.xml not well-formed", bad_xml, "error", fragment=("XML", "well-formed")
        )
        no_datum = root / "no_datum.brml"
        with zipfile.ZipFile(no_datum, "w") as archive:
            archive.writestr(
                "Experiment0/RawData0.xml",
                "<RawData><DataRoutes><DataRoute></DataRoute></DataRoutes></RawData>",
            )
        case(
            ".brml: RawData0.xml without <Datum>",
            no_datum,
            "error",
            fragment=("Datum", "no measured data"),
        )
        case(
            ".brml: a text file",
            write_text(root / "text.brml", "10 1\n11 2\n"),
            "error",
            fragment=("zip", "text.brml"),
        )
        case(
            ".brml: empty file",
            write_bytes(root / "empty.brml", b""),
            "error",
            fragment=("zip", "empty", "empty.brml"),
        )
    if ".raw" in suffixes:
        raw_bad = [
            ("too short (8 bytes of RAW1.01)", b"RAW1.01\x00", ("truncated", "short")),
            ("RAW1.01 header cut at 300 bytes", b"RAW1.01\x00" + bytes(292), ("truncated",)),
            ("version 1 ('RAW ')", b"RAW " + bytes(400), ("version", "not supported")),
            (
                "random bytes",
                np.random.default_rng(3).integers(0, 256, 1000, dtype=np.uint8).tobytes(),
                ("not a Bruker RAW", "raw"),
            ),
            ("a text pattern named .raw", b"10 1\n11 2\n", ("not a Bruker RAW", "raw")),
            ("empty file", b"", ("empty", "not a Bruker RAW", "truncated")),
        ]
        for index, (name, data, fragment) in enumerate(raw_bad):
            case(
                f".raw: {name}",
                write_bytes(root / f"bad_{index}.raw", data),
                "error",
                fragment=fragment,
            )
    if ".ras" in suffixes:
        rows = "".join(f"{t:.3f} {c} 1.0\n" for t, c in zip(tt, counts, strict=True))
        good_ras = write_text(root / "good.ras", _ras(rows))
        case("synthetic .ras", good_ras, "ok", check=sane(len(tt), 1.540593))
        sjis = write_bytes(
            root / "sjis.ras",
            _ras(rows, header='*FILE_COMMENT "試料"\n*HW_XG_TARGET_NAME "Cu"\n').encode(
                "shift_jis"
            ),
        )
        case(".ras with a Shift-JIS comment", sjis, "ok", check=sane(len(tt), CU))
        ras_bad = [
            ("no data rows", _ras(""), ("no data", "points", "no ")),
            ("a non-numeric row", _ras("10.0 100 1\n10.1 abc 1\n"), ("abc", "not a number", "row")),
            ("no *RAS_ markers (plain text)", "10 1\n11 2\n", ("RAS", "ras")),
            ("rows of 1 column", _ras("10.0\n10.1\n"), ("column", "row")),
            ("2θ repeated", _ras("10.0 1 1\n10.0 2 1\n10.1 3 1\n"), ("monotonic",)),
        ]
        case(
            ".ras: target 'Xx' and no wavelength",
            write_text(root / "xx.ras", _ras(rows, header='*HW_XG_TARGET_NAME "Xx"\n')),
            "either",
            fragment=("Xx", "target", "anode"),
            check=wavelength_is(None),
            should="no wavelength (None), or a clear error naming 'Xx'",
        )
        for index, (name, text, fragment) in enumerate(ras_bad):
            case(
                f".ras: {name}",
                write_text(root / f"bad_{index}.ras", text),
                "error",
                fragment=fragment,
            )
    # through the predictor and the CLI
    if FX.predictor is not None and ".xrdml" in suffixes:
        sample = root / "XRD-918-16_10.xrdml"
        if sample.exists():
            run_case(
                "predict_file (instrument files)",
                "sample XRD-918-16_10.xrdml (4-70°)",
                lambda: FX.predictor.predict_file(sample),
                expect="ok",
                check=lambda r, c: (
                    None
                    if r.wavelength
                    and abs(r.wavelength - 1.5406) < 1e-3
                    and "stated" in (r.wavelength_note or "")
                    else f"wavelength {r.wavelength}, note {r.wavelength_note!r}"
                ),
                protect=[sample],
            )
        xrr = root / "10_m84325_C_XRR_fast_processed.xrdml"
        if xrr.exists():
            run_case(
                "predict_file (instrument files)",
                "X-ray reflectivity scan 0.2-4.2° (.xrdml)",
                lambda: FX.predictor.predict_file(xrr),
                expect="error",
                fragment="covers",
                protect=[xrr],
            )
            cli_case(
                "X-ray reflectivity .xrdml",
                ["predict", FX.model, xrr],
                expect="error",
                fragment="covers",
                protect=[xrr],
            )
        raw = root / "TwoTheta_scan_scrambled.raw"
        if raw.exists():
            cli_case(
                "Bruker .raw sample --json",
                ["predict", FX.model, raw, "--json"],
                expect="ok",
                protect=[raw],
                check=json_check(
                    lambda a: (
                        None
                        if abs((a[0]["wavelength"] or 0) - 1.5406) < 1e-3
                        else f"wavelength {a[0]['wavelength']}"
                    )
                ),
            )
        cut = root / "cut50_XRD-918-16_10.xrdml"
        if cut.exists():
            cli_case(
                "truncated .xrdml",
                ["predict", FX.model, cut],
                expect="error",
                fragment=cut.name,
                protect=[cut],
            )


NEEDS_SETUP = {
    "instrument",
    "predict_input_values",
    "predict_arrays",
    "predict_file",
    "from_pretrained",
    "cli_predict",
    "cli_evaluate",
    "cli_push",
    "cli_train",
}
GROUPS = [
    ("setup", group_setup),
    ("read_pattern", group_read_pattern),
    ("read_cif", group_read_cif),
    ("read_simxrd", group_read_simxrd),
    ("read_reference_npy", group_read_reference_npy),
    ("predict_input_values", group_predict_input_values),
    ("predict_arrays", group_predict_arrays),
    ("predict_file", group_predict_file),
    ("from_pretrained", group_from_pretrained),
    ("instrument", group_instrument_files),
    ("config", group_config),
    ("losses", group_losses),
    ("collator", group_collator),
    ("generator", group_generator),
    ("simulate_peaks", group_simulate_peaks),
    ("cli_predict", group_cli_predict),
    ("cli_evaluate", group_cli_evaluate),
    ("cli_simulate", group_cli_simulate),
    ("cli_push", group_cli_push),
    ("cli_train", group_cli_train),
]


# ---------------------------------------------------------------------------------------- report

#: Where the surveyor believes each known failure comes from, and a one-line fix, keyed by
#: (entry prefix, case-name prefix). Shown for the failing cases only; a case that starts passing
#: drops out of the table by itself.
LIKELY_CAUSES = [
    (
        "CenterRegularizationLoss",
        "label",
        (
            "loss/physics_contrast_loss.py:CenterRegularizationLoss.forward calls "
            "check_labels(..., check_range=False) -> range-check (honour a validate flag "
            "like PhysicsContrastiveLoss)"
        ),
    ),
    (
        "HierarchicalLoss",
        "label",
        (
            "loss/physics_contrast_loss.py:HierarchicalLoss.forward calls check_labels(..., "
            "check_range=False) -> range-check (validate flag)"
        ),
    ),
    (
        "soft_entropy",
        "hard target",
        (
            "loss/moe_loss.py:soft_entropy gathers hard targets unchecked -> "
            "check_labels(target, input.shape[1]) first"
        ),
    ),
    (
        "PhysicsContrastiveLoss",
        "integer features",
        (
            "loss/physics_contrast_loss.py:PhysicsContrastiveLoss.forward -> refuse non-floating "
            "features (as output_tensor does)"
        ),
    ),
    (
        "PhysicsContrastiveLoss",
        "rule_matrix a numpy",
        (
            "loss/physics_contrast_loss.py:PhysicsContrastiveLoss.forward -> "
            "check_tensor(rule_matrix, 'rule_matrix') before .dim()"
        ),
    ),
    (
        "PXRDCollator",
        "no peaks",
        (
            "data/collator.py:PXRDCollator.__call__ (render_patterns) -> refuse a row with no peak "
            "(its clean pattern is all zero)"
        ),
    ),
    (
        "PXRDCollator",
        "peak_two_theta a string",
        (
            "data/render/padding.py:_as_numpy -> wrap the float conversion in a ValueError naming "
            "peak_two_theta / peak_intensity and the row"
        ),
    ),
    (
        "PXRDCollator",
        "num_labels",
        "data/collator.py:PXRDCollator.__post_init__ -> validate num_labels >= 1",
    ),
    (
        "PXRDCollator",
        "seed",
        "data/collator.py:PXRDCollator.__post_init__ -> validate seed is None or an int",
    ),
    (
        "ResNet1DMoEConfig",
        "class_prior",
        (
            "models/resnet1d_moe/configuration_resnet1d_moe.py:_validate_loss -> check "
            "len(class_prior) == num_labels (now only the model constructor does)"
        ),
    ),
    (
        "ResNet1DMoEConfig",
        "label_space_groups",
        (
            "configuration_resnet1d_moe.py:_validate -> check len(label_space_groups) == "
            "num_labels (now only space_group_numbers does)"
        ),
    ),
    (
        "ResNet1DMoEConfig",
        "unknown field",
        (
            "configuration_resnet1d_moe.py:ResNet1DMoEConfig.__post_init__ passes unknown kwargs "
            "to PretrainedConfig -> raise (or warn) with a did-you-mean, as build_model does"
        ),
    ),
    (
        "read_cif",
        "space-group number 231",
        (
            "data/structures.py:Crystal.from_gemmi treats a number outside 1..230 as 'not given' "
            "(P1) -> raise naming the number"
        ),
    ),
    (
        "read_cif",
        "Cartesian",
        (
            "data/structures.py:Crystal.from_cif/from_gemmi: gemmi leaves fract = 0 when only "
            "_atom_site_Cartn_* exist -> refuse (or convert with the cell) when "
            "_atom_site_fract_x is absent"
        ),
    ),
    (
        "read_cif",
        "UTF-8 byte-order",
        (
            "data/structures.py:Crystal.from_cif passes the path to gemmi, which rejects a BOM -> "
            "read bytes, strip the BOM, gemmi.cif.read_string"
        ),
    ),
    (
        "read_pattern",
        "anode after element",
        (
            "data/wavelength_header.py:_ANODE_KEYWORD "
            "matches only 'anode/target/tube ... Co' -> also "
            "'<element> anode|target|tube'"
        ),
    ),
    (
        "read_pattern",
        "thousands separators",
        (
            "data/readers.py:read_pattern skips every unparsable line before the first data line "
            "as header -> refuse (naming the line) a 'header' line that starts with a number"
        ),
    ),
    (
        "read_pattern",
        "typo in the first",
        (
            "data/readers.py:read_pattern (same header skip) -> refuse a numeric-looking "
            "line before the data, naming it"
        ),
    ),
    (
        "read_pattern",
        "wavelength=True",
        (
            "data/readers.py:read_pattern final wavelength check -> refuse bool / non-real "
            "wavelengths with a message naming wavelength"
        ),
    ),
    (
        "read_pattern",
        "wavelength='1.54'",
        (
            "data/readers.py:read_pattern math.isfinite(wavelength) -> check the type first "
            "(ValueError/TypeError naming wavelength)"
        ),
    ),
    (
        "read_pattern",
        "PANalytical",
        (
            "data/wavelength_header.py:_header_wavelengths "
            "takes the unitless 0.5 after 'K-Alpha2/K-Alpha1' "
            "as a Kα1 value -> ignore numbers in a clause naming a ratio (or require a unitless "
            "value to follow its keyword directly)"
        ),
    ),
    (
        "read_pattern",
        "UTF-16 BE",
        (
            "data/readers.py:_read_text tests NUL parity on data.lstrip(b'\\x00'), which "
            "eats the first (high) NUL byte of big-endian text -> strip only an even "
            "number of NULs before the test"
        ),
    ),
    (
        "read_simxrd",
        "limit",
        (
            "data/reference_data.py:iter_simxrd "
            "passes limit to ase, which reads 0 / negative as 'no "
            "limit' -> validate limit >= 0 and yield nothing for 0"
        ),
    ),
    (
        "read_simxrd",
        "malformed selection",
        "data/reference_data.py:iter_simxrd "
        "-> wrap ase's parse error: ValueError naming the selection",
    ),
    (
        "read_simxrd",
        "wavelength='1.54'",
        (
            "data/reference_data.py:iter_simxrd math.isfinite(wavelength) -> type check "
            "with a message naming wavelength"
        ),
    ),
    (
        "read_reference_npy",
        "a text file",
        (
            "data/reference_data.py:read_reference_npy "
            "maps every np.load 'allow_pickle' error to 'holds "
            "pickled objects' -> check the magic (\\x93NUMPY / PK) first: 'not a .npy/.npz file'"
        ),
    ),
    (
        "read_reference_npy",
        "empty .npy",
        (
            "data/reference_data.py:read_reference_npy "
            "-> catch EOFError / UnpicklingError from np.load: "
            "ValueError naming the file (empty or not .npy)"
        ),
    ),
    (
        "read_reference_npy",
        "truncated .npz",
        (
            "data/reference_data.py:read_reference_npy -> catch zipfile.BadZipFile: ValueError "
            "'not a readable .npz (truncated?)'"
        ),
    ),
    (
        "ResNet1D_MoE.from_pretrained",
        "config num_experts",
        (
            "transformers' load report raises RuntimeError('ignore_mismatched_sizes ...') "
            "-> override from_pretrained to raise ValueError listing the tensors whose "
            "shapes differ from config.json"
        ),
    ),
    (
        "ResNet1D_MoE.from_pretrained",
        "config hidden_sizes",
        (
            "as above (RuntimeError from transformers' load report -> ValueError "
            "naming the mismatched tensors)"
        ),
    ),
    (
        "ResNet1D_MoE.from_pretrained",
        "config.json a JSON list",
        (
            "hub.py:check_checkpoint_location (run it from an overridden from_pretrained) -> "
            "refuse a config.json that is not a JSON object"
        ),
    ),
    (
        "ResNet1D_MoE.from_pretrained",
        "",
        (
            "models/resnet1d_moe/modeling_resnet1d_moe.py: the model uses "
            "PreTrainedModel.from_pretrained unchecked -> override it to "
            "run physmoe.hub.check_checkpoint_location on local paths "
            "first (as SpaceGroupPredictor does)"
        ),
    ),
    (
        "SpaceGroupPredictor.from_pretrained",
        "config.json a JSON list",
        (
            "hub.py:check_checkpoint_location -> parse config.json and refuse anything but a "
            "JSON object, naming the file"
        ),
    ),
    (
        "SpaceGroupPredictor.from_pretrained",
        "config num_experts",
        (
            "transformers' load report raises RuntimeError('ignore_mismatched_sizes ...') -> catch "
            "it in from_pretrained and raise ValueError listing the mismatched tensors "
            "(config.json vs model.safetensors)"
        ),
    ),
    (
        "SpaceGroupPredictor.from_pretrained",
        "config hidden_sizes",
        "as above: ValueError naming the tensors whose shapes differ from config.json",
    ),
    (
        "SpaceGroupPredictor.from_pretrained",
        "corrupt preprocessor",
        (
            "inference.py:SpaceGroupPredictor.from_pretrained catches every OSError as "
            "'no preprocessor_config.json' -> only a missing file falls back; a "
            "corrupt one raises naming it"
        ),
    ),
    (
        "SpaceGroupPredictor.from_pretrained",
        "preprocessor grid",
        (
            "inference.py:SpaceGroupPredictor.__init__ -> compare feature_extractor.grid with the "
            "model config's grid and refuse a mismatch naming preprocessor_config.json"
        ),
    ),
    (
        "physmoe predict",
        "model whose weights",
        (
            "cli.py:main catches only ValueError/TypeError/OSError; the transformers RuntimeError "
            "escapes -> convert it in from_pretrained (above)"
        ),
    ),
    (
        "physmoe evaluate",
        "--real with a missing",
        (
            "evaluation/real.py:evaluate_real_checkpoint -> call "
            "hub.check_checkpoint_location before from_pretrained"
        ),
    ),
    (
        "physmoe evaluate",
        "--split",
        (
            "workflow.py:evaluate_checkpoint/load_data: Dataset.shuffle(seed).select() writes "
            "cache-*.arrow into the dataset folder -> shuffle(..., keep_in_memory=True) (or select "
            "numpy-permuted indices in memory)"
        ),
    ),
    (
        "physmoe train",
        "max_train_samples 16",
        (
            "workflow.py:load_data: Dataset.shuffle(seed).select() writes cache-*.arrow into the "
            "dataset folder -> keep_in_memory=True"
        ),
    ),
    (
        "physmoe train",
        "config is a folder",
        "cli.py:_train says 'not found' for any non-file -> say it is a folder",
    ),
    (
        "physmoe train",
        "model_overrides broken",
        (
            "workflow.py:build_model json.loads without context -> ValueError 'model_overrides "
            "must be a JSON object: <error>'"
        ),
    ),
    (
        "physmoe train",
        "model_overrides a YAML list",
        (
            "cli.py:_train json-dumps only dict overrides; workflow.py:build_model "
            "json.loads(list) -> refuse non-mapping model_overrides naming the setting"
        ),
    ),
    (
        "physmoe train",
        "model_name_or_path missing",
        (
            "workflow.py:build_model -> call hub.check_checkpoint_location(model_name_or_path) "
            "before ResNet1DMoEConfig.from_pretrained"
        ),
    ),
    (
        "physmoe train",
        "--overwrite_output true with model_name_or_path",
        "workflow.py:build_model -> hub.check_checkpoint_location first (the old model is kept)",
    ),
    (
        "physmoe train",
        "output_dir is an existing file",
        "run_outputs.py:_check_output_dir -> refuse an output_dir that exists and is not a folder",
    ),
    (
        "physmoe train",
        "metric_for_best_model",
        (
            "workflow.py:train_and_evaluate -> check metric_for_best_model against the metrics "
            "PhysMoETrainer computes before training; cli.py:main lets the KeyError escape"
        ),
    ),
    (
        "physmoe train",
        "predict_files",
        (
            "workflow.py:train_and_evaluate (or cli.py:_train) -> check that every "
            "predict_files path exists before training"
        ),
    ),
    (
        "predict_input_values",
        "a string",
        (
            "inference.py:normalize_input_values torch.as_tensor -> wrap: ValueError "
            "'input_values must be numbers, got str'"
        ),
    ),
    (
        "predict_input_values",
        "None",
        "inference.py:normalize_input_values -> refuse None with a message naming input_values",
    ),
    (
        "predict_input_values",
        "top_k=None",
        "inference.py:predict_input_values int(top_k) -> validate top_k is an int first",
    ),
    (
        "RandomCrystalGenerator",
        "generate(5)",
        (
            "data/random_crystals.py:RandomCrystalGenerator.generate -> refuse a "
            "non-iterable indices naming it"
        ),
    ),
    (
        "simulate_peaks",
        "two_theta_range",
        (
            "data/simulate/options.py:_check_options/_build_options unpack two_theta_range "
            "unchecked -> "
            "ValueError 'two_theta_range must be (min, max) numbers, got ...'"
        ),
    ),
    (
        "simulate_peaks",
        "b_iso",
        "data/simulate/options.py:_site_b_iso float(b_iso) -> wrap: ValueError naming b_iso",
    ),
    (
        "simulate_peaks",
        "NaCl with a = 564",
        (
            "data/simulate/reflections.py:_reciprocal_points builds the whole hkl box (meshgrid) "
            "-> estimate "
            "(H+1)(2K+1)(2L+1) first and refuse above a limit, naming cell and wavelength"
        ),
    ),
    (
        "simulate_peaks",
        "wavelength=1e-3",
        (
            "data/simulate/reflections.py:_reciprocal_points (same) -> refuse a box beyond a "
            "limit, naming the wavelength"
        ),
    ),
]


def likely_cause(outcome: Outcome) -> str:
    for entry, name, cause in LIKELY_CAUSES:
        if outcome.entry.startswith(entry) and outcome.name.startswith(name):
            return cause
    return "-"


def _md(text: str) -> str:
    return (
        str(text)
        .replace(str(TMP), "$SANDBOX")
        .replace(str(REPO), ".")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def write_report(path: Path, seconds: float, command: str) -> str:
    counts = {
        category: sum(1 for r in RESULTS if r.category == category) for category in CATEGORIES
    }
    lines = [
        "# Bad-input survey",
        "",
        f"Command: `{command}`",
        "",
        f"physmoe {physmoe.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; {len(RESULTS)} cases in {seconds / 60:.1f} min (wall, "
        "niced, beside a training job). Generated by `scripts/survey_bad_inputs.py` (its "
        "docstring defines the categories). More cases than the 150-300 first aimed at: most "
        "are cheap programmatic variants (header forms, config fields, file truncations); "
        "`--only GROUP` runs a subset.",
        "",
        "| category | cases |",
        "|---|---|",
        *[f"| {category} | {counts[category]} |" for category in CATEGORIES],
        f"| **total** | **{len(RESULTS)}** |",
        "",
        "## Cases by entry point",
        "",
        "| entry | cases | clear error | worked | silently wrong | raw/misleading | side effect |",
        "|---|---|---|---|---|---|---|",
    ]
    entries = list(dict.fromkeys(r.entry for r in RESULTS))
    for entry in entries:
        mine = [r for r in RESULTS if r.entry == entry]
        cells = [str(sum(1 for r in mine if r.category == c)) for c in CATEGORIES]
        lines.append(f"| {_md(entry)} | {len(mine)} | " + " | ".join(cells) + " |")
    failing = [r for r in RESULTS if r.category not in (CLEAR, WORKED)]
    lines += [
        "",
        f"## Cases that are neither a clear error nor worked correctly ({len(failing)})",
        "",
    ]
    if failing:
        lines += [
            "The last column is the surveyor's reading of the source (not verified by a fix).",
            "",
            (
                "| # | category | entry | input | what happened | what should happen | "
                "likely cause -> proposed fix |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for index, r in enumerate(
            sorted(failing, key=lambda r: (CATEGORIES.index(r.category), r.entry)), 1
        ):
            lines.append(
                f"| {index} | {r.category} | {_md(r.entry)} | {_md(r.name)} | {_md(r.happened)} | "
                f"{_md(r.should)} | {_md(likely_cause(r))} |"
            )
    else:
        lines.append("None.")
    if NOT_SURVEYED:
        lines += ["", "## Not surveyed", ""]
        lines += [f"- **{_md(what)}**: {_md(why)}" for what, why in NOT_SURVEYED]
    lines += [
        "",
        "## Method",
        "",
        "Every case runs in a temporary directory (also HF_HOME, PHYSMOE_CACHE, MPLCONFIGDIR, the "
        "working directory), with HF_HUB_OFFLINE=1. Library calls are classified by exception type "
        "and message; `physmoe` commands run in-process through `physmoe.cli.main` (return code, "
        "`error:` on stderr, no traceback). Inputs a call must not change (pattern files, "
        "databases, model folders, a finished model under `--overwrite_output`) are hashed before "
        "and after. Prediction cases use a tiny model (tests/tiny_models.py) that the survey "
        "trains with `physmoe train` on 60 embedded structures of 4 space groups, and compare "
        "against the answer for the clean input. Two simulations that may exhaust memory run in a "
        "child process with a 3 GiB address-space limit and a time limit.",
        "",
    ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(REPO / "results" / "bad_input_survey.md"))
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        help="run only groups whose name contains this (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    output = Path(args.output)
    if not output.is_absolute():
        output = REPO / output
    print(f"sandbox: {TMP}", file=sys.__stdout__, flush=True)
    try:
        selected = [
            name for name, _ in GROUPS if not args.only or any(word in name for word in args.only)
        ]
        if any(name in NEEDS_SETUP for name in selected):
            selected.insert(0, "setup")
        for name, group in GROUPS:
            if name not in selected:
                continue
            group_start = time.perf_counter()
            try:
                group()
            except Exception:  # a broken fixture must not lose the other groups
                RESULTS.append(
                    Outcome(
                        f"survey group {name}",
                        "fixture",
                        "-",
                        RAW,
                        _short(
                            "survey fixture failed: "
                            + traceback.format_exc().strip().splitlines()[-1]
                        ),
                        "-",
                        0.0,
                    )
                )
                traceback.print_exc(file=sys.__stdout__)
            print(
                f"-- {name}: {time.perf_counter() - group_start:.0f} s",
                file=sys.__stdout__,
                flush=True,
            )
    finally:
        seconds = time.perf_counter() - START
        command = (
            "cd /work/main && HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python "
            "scripts/survey_bad_inputs.py"
        )
        if args.only:
            command += "".join(f" --only {word}" for word in args.only)
        write_report(output, seconds, command)
        counts = {
            category: sum(1 for r in RESULTS if r.category == category) for category in CATEGORIES
        }
        print(
            f"\n{len(RESULTS)} cases in {seconds:.0f} s: "
            + ", ".join(f"{c}: {n}" for c, n in counts.items()),
            file=sys.__stdout__,
        )
        print(f"report: {output}", file=sys.__stdout__)
        if not args.keep:
            os.chdir(REPO)
            shutil.rmtree(TMP, ignore_errors=True)
        else:
            print(f"kept: {TMP}", file=sys.__stdout__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
