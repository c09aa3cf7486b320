"""The one family of input errors: bad experiments.yaml, command-line choices, toggles or
environment settings. Entry points answer each with one `error:` line and exit 2."""


class ConfigError(ValueError):
    """A bad choice; the message names the valid choices or the fix."""
