"""vistok: visual tokenizers and autoregressive generators, one trainer, one release format."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy, so that `import vistok` stays light
    if name == "Pipeline":
        from vistok.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
