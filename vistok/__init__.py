"""vistok: visual tokenizers and autoregressive generators, one trainer, one release format."""
from vistok.version import __version__  # noqa: F401


def __getattr__(name):  # lazy, so that `import vistok` stays light
    if name == "Pipeline":
        from vistok.pipelines.base import Pipeline

        return Pipeline
    raise AttributeError(name)
