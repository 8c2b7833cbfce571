"""Error kinds the runner tells apart, because the operator retries one and not the other."""

EXIT_OK = 0
EXIT_FAILED = 1  # anything else: may be transient (OOM, node loss), the operator may retry
EXIT_BAD_INPUT = 2  # bad config or missing input: permanent, the operator must not retry
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a process stopped by SIGTERM reports: the pod was stopped


class BadInputError(Exception):
    """The config or an input file is wrong; str(error) is one sentence meant for a person."""


class RunnerFailure(Exception):
    """A failure with its own termination-message reason and exit code; str(error) is one sentence."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.reason, self.exit_code = reason, exit_code
