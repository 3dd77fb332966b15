"""Flank wear of cutting inserts: measurement from a wear mask (:mod:`.measure`), folders and CSV
(:mod:`vinspect.pipeline.wear`), pictures (:mod:`.plots`), grading from the measures on the repeated-split protocol
(:mod:`.grade`)."""
