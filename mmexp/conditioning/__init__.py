"""Conditions for conditional generation: text encoders, label embeddings and the :class:`Conditioner`.

Every encoder returns a :class:`Condition` (``pooled [B, D]``, ``tokens [B, L, D]``, ``mask [B, L]``); a
conditional model owns one :class:`Conditioner` (config node ``model.conditioner``) that combines a text
encoder (``text_encoder=`` group: ``learned``, ``minilm``, ``use``, ``clip``, ``none``) and/or class labels,
with the condition dropout that classifier-free guidance needs. Importing this package loads no pretrained
network; a frozen encoder loads its network the first time it has to encode a caption.
"""

from mmexp.conditioning.base import FrozenTextEncoder, TextEncoder
from mmexp.conditioning.clip import CLIPTextEncoder
from mmexp.conditioning.condition import Condition
from mmexp.conditioning.conditioner import Conditioner, LabelEncoder
from mmexp.conditioning.learned import LearnedTextEncoder, Vocabulary
from mmexp.conditioning.minilm import MiniLMEncoder
from mmexp.conditioning.use import USEEncoder

__all__ = ["CLIPTextEncoder", "Condition", "Conditioner", "FrozenTextEncoder", "LabelEncoder", "LearnedTextEncoder",
           "MiniLMEncoder", "TextEncoder", "USEEncoder", "Vocabulary"]
