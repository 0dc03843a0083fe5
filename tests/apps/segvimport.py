"""An app module that dies of SIGSEGV while being imported: every worker crashes before
it is ready, so the manager must back off instead of respawning in a tight loop."""

import ctypes

ctypes.string_at(0)

application = None  # never reached
