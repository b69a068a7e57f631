"""Checkpoints: named ones (`registry`), finding their files and fingerprints (`hub`), reading
each format (`weights`, `safetensors_mmap`, `params`' renaming rules), the converted-weights
cache (`cache`) and writing a checkpoint (`save`).

Importing this package imports none of its modules.
"""
