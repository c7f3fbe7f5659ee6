"""The experiments behind the measured numbers in docs/: one module per study, each run as
``ssmsteer study NAME`` (``studies.cli`` lists them). Built on the package's public functions only."""


class StudyArgumentError(ValueError):
    """Arguments that parse but do not go together; ``ssmsteer study`` says why in one line (exit 2)."""
