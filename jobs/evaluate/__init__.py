"""`maskgit evaluate` and `maskgit fid-stats`: the Ray evaluation job and its reference statistics."""
