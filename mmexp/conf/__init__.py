"""mmexp configs: a package so Hydra finds them wherever mmexp is installed."""
