"""The backpack contract: one model of every file in a backpack, imported by both sides.

`layout` (the folder: find, validate, write all-or-nothing), `workflow` (the notebook or
script and its cells), `environment` (environment.yml and requirements.txt: `Pin`, `EnvSpec`),
`data` (data.yml: `DataSpec`, `DataEntry`, targets), `compute` (compute.yml), `checksums`
(the checksum format and how files and folders are hashed), `cells` (audit/cells.yml),
`session` (audit/session.json) and `summary` (audit/summary.json). docs/internals.md lists each
file's model, schema version, writer and readers.
"""
