"""Knowledge distillation: frozen teachers from anywhere and the losses that pull a student towards them."""
