"""`maskgit train` and `maskgit export`: the Ray Train + DeepSpeed ZeRO training job and its checkpoints."""
