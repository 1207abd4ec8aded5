"""Errors raised for bad user input, so that every client can print one clear line."""


class CVBMInputError(ValueError):
    """Bad input from the user (file, shape, label values, settings).

    The message is written for the user: the CLI prints it as one line, the GUI as a
    notification.
    """


class CVBMNotice(UserWarning):
    """Something the user should know that changes nothing they asked for (e.g. how a 0/255 mask
    was read). Issued with :func:`warnings.warn`; the CLI prints ``cvbm: note: ...``, napari shows
    a notification."""
