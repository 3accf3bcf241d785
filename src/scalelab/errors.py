"""Errors a user can cause. The CLI prints their message alone (no traceback)."""


class ScalelabError(Exception):
    """Base class: the message names the thing that is wrong and how to fix it."""


class ConfigError(ScalelabError):
    """A config key, value or file is wrong."""


class DataError(ScalelabError):
    """A corpus, shard, tokenizer or meta file is missing, corrupt or mismatched."""


class CheckpointError(ScalelabError):
    """A checkpoint is missing, corrupt or does not match the run."""


class TrainingError(ScalelabError):
    """Training cannot continue (NaN loss, out of memory, ...)."""
