"""``modules.sd_hijack``: the ``model_hijack.comments`` list the Lora extension writes to, and the
textual-inversion ``embedding_db`` where bundled embeddings are registered."""
from types import SimpleNamespace

from modules.textual_inversion.textual_inversion import EmbeddingDatabase

model_hijack = SimpleNamespace(comments=[], extra_generation_params={}, embedding_db=EmbeddingDatabase())
