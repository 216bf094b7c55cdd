"""The error every ``dwh`` failure meant for a person derives from.

Its message is a sentence: what failed (a table, partition, file, login) and what to do.
``dwh`` prints it without a traceback; anything else that escapes is a bug.
"""


class DwhError(RuntimeError):
    """An error whose message is a sentence for the user: what failed and what to do."""
