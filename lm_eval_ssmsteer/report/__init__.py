"""Leaderboards and regression checks over lm-eval results files (any backend, any task).

``results`` reads files into runs, ``leaderboard`` builds the table, ``writers`` and ``plots`` render it,
``regress`` compares against a baseline; ``cli`` and ``cli_regress`` are the ``ssmsteer`` subcommands.
"""
