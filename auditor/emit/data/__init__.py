"""The data draft (DESIGN.md rule 8): data/data.yml and the summary's data part.

`collect` watches the event stream (one pass) and classifies what the run read and wrote,
by the pure rules of `rules` (what is data, a secret, tool state, a URL's credentials);
`stores` groups object-store keys; `urls` drafts the remote inputs; `hashing` is the only I/O
on the inputs (sizes and sha256); `draft` holds the draft and its entries' names; `yml`
renders data.yml (and bundles inputs into the backpack); `report` the summary's data part;
`stage` builds a collector for a saved record.
"""
