"""Realism probes below the stages (numpy only): what training's checkpoint choice and
``evaluate`` measure; :mod:`.battery` is the entry point."""
