"""The distillation terms: the method of He et al. (``method``: autoencoder, adapters, adaptation
and affinity; ``gram``: the affinity without m x m matrices), the field's other losses
(``field``, ``contrastive``), and the one registry every term is selected from (``registry``)."""
