"""`maskgit quickstart`: the whole pipeline end to end on Fashion-MNIST, and its sampling ablation."""
