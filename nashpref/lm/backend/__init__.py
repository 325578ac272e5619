"""Backends: everything that changes with the number of processes (see ``base.Backend``)."""
