"""The data draft (DESIGN.md rule 8): data/data.yml and the summary's data part.

`collect` watches the event stream (one pass) and runs the draft's stages; `classify` decides,
purely from the uses it gathered and the facts about the disk, what each path is, by the pure
rules of `rules` (what is data, a secret, tool state, a URL's credentials); `inputs` does the
filesystem work around it (one stat pass before; after it, stores and folders grouped, then
sizes and sha256 through `hashing`); `stores` groups object-store keys; `urls` drafts the
remote inputs; `draft` holds the draft and its entries' names; `yml` renders data.yml (and
bundles inputs into the backpack); `report` the summary's data part; `stage` builds a
collector for a saved record.
"""
