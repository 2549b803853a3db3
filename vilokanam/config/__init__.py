"""Settings for every part of Vilokanam, validated at start."""

from vilokanam.config.settings import ConfigError, Rung, Settings, load_settings

__all__ = ["ConfigError", "Rung", "Settings", "load_settings"]
