"""What flo-audit and flo-run both need that is not the backpack: the one root exception and
its family (`errors`), how a notebook's execution ended (`execution`), the one subprocess runner and
`launch` for long-lived processes (`process`), the process tree of a run and its token
(`tree`), a Python environment's activation and checks (`interpreter`), folders owned by a
live process (`stale`), and the last-resort crash handler (`crash`). flo-run imports from the
auditor only this package and `auditor.backpack`.
"""
