"""The interface's screens: the dashboard, a run's detail, and the dialogs they open."""
