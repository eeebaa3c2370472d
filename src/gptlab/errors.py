"""The one exception type that reaches the user as a one-line message."""


class GptlabError(Exception):
    """A problem with the user's input or files: the message says what is wrong and what to do.

    The CLI prints it on one line and exits with code 2; anything else is a bug and keeps its traceback.
    silent: under torchrun, the copy that ranks other than 0 raise of an error rank 0 prints, so it shows once.
    """

    exit_code = 2
    is_error = True  # False for a stop the user asked for (Ctrl-C, SIGTERM): reported without "error:"

    def __init__(self, message: str = "", silent: bool = False):
        super().__init__(message)
        self.silent = silent
