"""Errors raised for bad user input, so that every client can print one clear line."""


class CVBMInputError(ValueError):
    """Bad input from the user (file, shape, label values, settings).

    The message is written for the user: the CLI prints it as one line, the GUI as a
    notification.
    """
