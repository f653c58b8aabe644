"""The base of every error caused by input rather than by a bug.

Its message names the file, item or config key at fault and what to do; the `jaxseq` command
prints it without a traceback (pass -v for one).
"""


class JaxseqError(Exception):
    """Bad input: a missing or corrupt file, a bad config key or value, an unusable item."""


class ConfigError(JaxseqError, ValueError):
    """A config file or override is invalid; the message names the key and a fix."""
