"""Start-up hook (installed as a ``.pth`` line): registers the plugin the moment lm_eval is imported.

lm-eval 0.4.13 has no plugin discovery, so the stock ``lm_eval --model mamba-steered`` command can only
find this backend through a hook that runs in every Python process. It must cost nothing there: it
installs one tiny ``sys.meta_path`` finder, imports nothing, and acts only when ``lm_eval.api.registry``,
``lm_eval.tasks`` or ``lm_eval._cli.harness`` (the command line) finish importing.
"""

import sys

# watched module -> the ``registration`` function that runs once it has been imported
_WATCHED = {
    "lm_eval.api.registry": "register_model",
    "lm_eval.tasks": "register_tasks",
    "lm_eval._cli.harness": "register_cli",
}


class _AfterImport:
    """Wraps a module loader so that a callback runs once the module has executed."""

    def __init__(self, loader, callback):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._callback(module.__name__)
        except Exception as exc:  # never break lm_eval itself (e.g. `--model hf`) over the plugin
            print(f"lm_eval_ssmsteer: plugin registration failed: {exc!r}", file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _LmEvalWatcher:
    """A meta-path finder that defers to the real finders and only wraps the watched modules' loaders."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterImport(spec.loader, _on_import)
                return spec
        return None


def _on_import(name):
    from lm_eval_ssmsteer.lmeval import registration

    getattr(registration, _WATCHED[name])()


def install():
    if not any(isinstance(f, _LmEvalWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalWatcher())


install()
