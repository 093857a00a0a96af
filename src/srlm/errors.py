"""The one exception type for user mistakes (bad config, bad data, missing paths).

The CLI prints it as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message says what and where."""


class NonFiniteLoss(Exception):
    """A training stage's loss or gradient became NaN or infinite: the stage fails, its message is the reason."""
