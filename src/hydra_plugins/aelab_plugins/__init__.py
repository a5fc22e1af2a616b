"""aelab's Hydra plugins. Hydra accepts plugin classes only from the `hydra_plugins` namespace
and imports every module here at start-up, so these are thin and light: the code is in
`aelab.sweeps`."""
