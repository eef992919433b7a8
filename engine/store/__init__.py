"""Durable state in one SQLite file (WAL, busy timeout, versioned migrations).

| module      | imports         | used by                                   |
|-------------|-----------------|-------------------------------------------|
| ``sql``     | stdlib only     | everyone: the CLI's offline submit and ls, the daemon |
| ``schema``  | sqlite-utils    | the daemon and a first-time offline submit |
| ``runs``    | stdlib only     | the daemon: compare-and-set transitions    |
"""
