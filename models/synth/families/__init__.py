"""Independent families of synthetic captures (separate code each; see ``models.synth.family``)."""
