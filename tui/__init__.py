"""runyard's terminal interface (Textual).

Kept apart from ``engine`` so the engine never pays for, or depends on, Textual. The
command line imports :class:`tui.app.RunyardApp` only when it opens the interface.
"""
