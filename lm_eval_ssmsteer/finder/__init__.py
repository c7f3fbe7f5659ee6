"""The bottleneck finder (``ssmsteer find``): which channels of which (layer, site) to scale, and by how
much, chosen on calibration data only. Methods in ``methods``, the search and its outputs in ``search``,
calibration data in ``data``; docs/finder.md explains the protocol."""

from lm_eval_ssmsteer.finder.data import CalibrationData, FinderError, encode_pairs
from lm_eval_ssmsteer.finder.methods import METHODS
from lm_eval_ssmsteer.finder.search import FindResult, find, write_outputs

__all__ = ["METHODS", "CalibrationData", "FindResult", "FinderError", "encode_pairs", "find", "write_outputs"]
