"""The one exception type that reaches the user as a one-line message."""


class GptlabError(Exception):
    """A problem with the user's input or files: the message says what is wrong and what to do.

    The CLI prints it on one line and exits with code 2; anything else is a bug and keeps its traceback.
    """

    exit_code = 2
    is_error = True  # False for a stop the user asked for (Ctrl-C, SIGTERM): reported without "error:"
