"""Imports every module that registers a model or dataset, so that registry lookups see them all."""
import vistok.data.mnist  # noqa: F401
import vistok.data.shapes  # noqa: F401
import vistok.data.images  # noqa: F401
import vistok.data.shards  # noqa: F401
import vistok.data.tokens  # noqa: F401
import vistok.tokenizers.vqgan  # noqa: F401
import vistok.tokenizers.tokenflow  # noqa: F401
import vistok.tokenizers.semantic_teacher  # noqa: F401
import vistok.tokenizers.kl  # noqa: F401
import vistok.generators.ar  # noqa: F401
import vistok.generators.xar  # noqa: F401
import vistok.evaluation.lenet  # noqa: F401
import vistok.data.sr  # noqa: F401
import vistok.generators.catanet  # noqa: F401
import vistok.generators.window_sr  # noqa: F401
import vistok.data.em  # noqa: F401
import vistok.generators.tokenunify  # noqa: F401
