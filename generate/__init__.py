"""The thermobench generator: relax, phonons and beyond, one stage per module."""
