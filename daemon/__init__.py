"""roomtranslate: live speech translation for meeting rooms."""

__version__ = "0.1.0"
