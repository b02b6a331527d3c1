"""TensorFlow's start-up lines kept off stderr, so that an error stays the one line there.

TensorFlow 2.21 logs through absl before TF_CPP_MIN_LOG_LEVEL applies ("oneDNN custom operations are on", the CPU
features it was not built for), straight to file descriptor 2. quiet_tensorflow_import() installs an import hook:
the first `import tensorflow` (keras imports it too) runs with descriptor 2 captured, and what it wrote is passed on
to stderr without those info and warning lines. Errors (E, F) and anything else pass.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# absl's C++ log lines below ERROR ("I0000 00:00:1796611544.261805    9746 port.cc:153] ...") and its preamble
NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                   r"|[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] )")


def quiet_tensorflow_import():
    """Filter the first import of TensorFlow in this process (a no-op once it is imported or hooked)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self.real.exec_module(module)


@contextlib.contextmanager
def filtered_stderr():
    """Descriptor 2 goes to a temporary file while the block runs; its lines but the noise are written after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
