"""The distillation terms: the method of He et al. (``method``: autoencoder, adapters, adaptation
and affinity; ``gram``: the affinity without m x m matrices), the field's other losses one file
each (``kd``, ``fitnet``, ``skd``, ``cwd``, ``dist``, ``ifvd``, ``contrastive``: CIRKD and Af-DCD;
``masks``: the labels and valid positions on a map's grid), and the one registry every term is
selected from (``registry``)."""
