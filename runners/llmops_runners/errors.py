"""Error kinds the runner tells apart, because the operator retries one and not the other."""

EXIT_OK = 0
EXIT_FAILED = 1  # anything else: may be transient (OOM, node loss), the operator may retry
EXIT_BAD_INPUT = 2  # bad config or missing input: permanent, the operator must not retry


class BadInputError(Exception):
    """The config or an input file is wrong; str(error) is one sentence meant for a person."""
