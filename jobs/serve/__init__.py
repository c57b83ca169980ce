"""`maskgit serve`: the Ray Serve application (sampler deployment + HTTP ingress) and its config file."""
