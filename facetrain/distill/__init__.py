"""Knowledge distillation: frozen teachers from anywhere and the losses that pull a student towards them.

Every loss module is imported here, so that its registration in
:data:`facetrain.distill.losses.DISTILL_LOSSES` runs whichever module is imported first.
"""
from facetrain.distill import ekd, pointwise, relational  # noqa: F401  (registrations)
