"""The error every configuration check raises (`dpe_dagster.config` re-exports it)."""


class ConfigError(ValueError):
    """A configuration value is missing or not allowed; the message names the field."""
