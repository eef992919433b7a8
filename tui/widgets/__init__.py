"""The interface's widgets. Each is fed data by the app through methods; none reads its parents."""
