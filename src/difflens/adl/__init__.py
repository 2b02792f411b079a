"""The Activation Difference Lens (paper §3): collection of δ̄, logit lens, Patchscope, steering, and
the forward interventions they share."""
