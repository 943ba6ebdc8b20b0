"""The one source of jaxopt2's version (read by setuptools and by ``jaxopt2.__version__``)."""

__version__ = "0.1.0"
