"""An app module that cannot be imported: the manager must log it and retry slowly."""

raise ImportError("pyfpm-test-import-failure-marker")

application = None  # never reached
