"""ordermerge: fine-tune on several data orders, then merge selectively (Ju et al., EMNLP 2024)."""

__version__ = "0.1.0"


class OrdermergeError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""
