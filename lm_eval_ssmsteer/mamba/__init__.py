"""Everything this package knows about Mamba internals lives here, and only here.

- ``arch``: which model types are supported, their mixer family and shape;
- ``sites``: one table row per (site, family): width, how it is reached, twin;
- ``compat``: what differs between transformers releases (keywords, cache access, function names);
- ``patch``: the one mechanism that swaps a function inside a modeling module;
- ``fastscan``: the hand-written CPU selective scan and the one rule for where it runs;
- ``mixer_math``: a mixer's intermediates recomputed in plain torch (interpretability);
- ``stable``: Stable-Mamba, a Mamba-1 with several Δ timescales per channel.
"""
