"""The system side of the evidence report's PDF tests: WeasyPrint's libraries, the fonts the
report names, and poppler's ``pdftotext``/``pdfdetach`` to read a PDF back::

    ensure_packages()
    text = pdftotext(pdf_bytes)     # the PDF's text, laid out as on the page

Debian's packages are installed when missing (as root, ``apt-get install``; ``apt-get update``
only when that fails), as :mod:`testkit.postgres` and :mod:`testkit.browser` do; anything that
goes wrong raises :class:`PdfToolError`: the tests fail loudly instead of skipping.

>>> sorted(_PACKAGES)[:2]
['fonts-dejavu-core', 'libharfbuzz-subset0']
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

__all__ = [
    "PDFDETACH",
    "PDFINFO",
    "PDFTOTEXT",
    "PdfToolError",
    "ensure_packages",
    "pdfdetach_list",
    "pdfinfo_meta",
    "pdftotext",
]

PDFTOTEXT = Path("/usr/bin/pdftotext")
PDFDETACH = Path("/usr/bin/pdfdetach")
PDFINFO = Path("/usr/bin/pdfinfo")
# poppler-utils reads PDFs back; the rest is what WeasyPrint loads (pango, harfbuzz's subsetter
# for embedded fonts) and the fonts the report's CSS names (DejaVu Sans, DejaVu Sans Mono).
_PACKAGES = [
    "poppler-utils",
    "libpango-1.0-0",
    "libpangoft2-1.0-0",
    "libharfbuzz-subset0",
    "fonts-dejavu-core",
]


class PdfToolError(RuntimeError):
    """The packages cannot be installed, or a poppler tool failed."""


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def _missing(packages: list[str] = _PACKAGES) -> list[str]:
    """The packages dpkg does not list as installed (all of them where there is no dpkg)."""
    try:
        done = _run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *packages])
    except FileNotFoundError:
        return list(packages)
    installed = {
        line.split()[0].split(":")[0]
        for line in done.stdout.splitlines()
        if len(line.split()) >= 2 and line.split()[1] == "ii"
    }
    return [name for name in packages if name not in installed]


def ensure_packages(*, tools: bool = True) -> None:
    """Install poppler-utils, pango, harfbuzz-subset and the DejaVu fonts with apt when missing;
    ``tools=False``: only what WeasyPrint needs to render (``make demo``)."""
    packages = _PACKAGES if tools else [p for p in _PACKAGES if p != "poppler-utils"]
    missing = _missing(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise PdfToolError(f"{' '.join(missing)} are missing and this is not root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    done = _run(install, env=env)
    if done.returncode != 0:
        _run(["apt-get", "update", "-q"], env=env)
        done = _run(install, env=env)
    if done.returncode != 0 or _missing(packages):
        raise PdfToolError(f"cannot install {missing}: {done.stderr[-2000:]}")


def _poppler(args: list[str], pdf: bytes) -> str:
    ensure_packages()
    done = subprocess.run(args, input=pdf, capture_output=True, check=False)
    if done.returncode != 0:
        raise PdfToolError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return done.stdout.decode("utf-8")


def pdftotext(pdf: bytes) -> str:
    """The text of ``pdf`` as ``pdftotext -layout`` reads it (UTF-8)."""
    return _poppler([str(PDFTOTEXT), "-layout", "-enc", "UTF-8", "-", "-"], pdf)


def _on_file(args: list[str], pdf: bytes) -> str:
    """Run a poppler tool that reads stdin poorly on ``pdf`` written to a temporary file."""
    ensure_packages()
    with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:
        handle.write(pdf)
        handle.flush()
        done = _run([*args, handle.name])
    if done.returncode != 0:
        raise PdfToolError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def pdfdetach_list(pdf: bytes) -> list[str]:
    """The names of the files embedded in ``pdf`` (``pdfdetach -list``)."""
    listing = _on_file([str(PDFDETACH), "-list", "-enc", "UTF-8"], pdf)
    # "3 embedded files\n1: manifest.json\n..."
    return [line.split(": ", 1)[1] for line in listing.splitlines()[1:] if ": " in line]


def pdfinfo_meta(pdf: bytes) -> str:
    """The XMP metadata stream of ``pdf`` (``pdfinfo -meta``): where PDF/A conformance is
    declared (``pdfaid:part``, ``pdfaid:conformance``)."""
    return _on_file([str(PDFINFO), "-meta"], pdf)
