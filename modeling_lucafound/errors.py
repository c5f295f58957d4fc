"""Exceptions for every failure a user's input can cause: each says what was wrong and what to do."""


class LuCaFoundInputError(ValueError):
    """Base class for errors caused by a user's input (files, arrays, checkpoints, configs)."""


class CheckpointKeyMismatchError(LuCaFoundInputError):
    """A checkpoint whose parameter names do not match the model it should load into."""
