"""Making transformers take its torch fallback in one process while another uses the kernels."""

from __future__ import annotations

import sys

KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d")


class _Hide:
    """A meta-path finder that makes the kernel packages unimportable."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in KERNEL_PACKAGES:
            raise ModuleNotFoundError(fullname)
        return None


def hide_kernels() -> None:
    """Call before transformers is imported: it resolves kernels once, at import."""
    assert "transformers" not in sys.modules, "hide the kernels before importing transformers"
    sys.meta_path.insert(0, _Hide())


def kernel_versions() -> dict[str, str | None]:
    versions = {}
    for pkg in KERNEL_PACKAGES:
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError:
            versions[pkg] = None
    return versions
